-- The guessing bound, redesigned so that nobody who does not know the password can keep its owner
-- out (the old per-account back-off could be renewed forever by anyone, leaked in-flight counts
-- on aborted requests, and was cleared by load shedding).
--
-- Failures are counted per (account, source): a source is the client address (an IPv6 /64).
-- Sources that never logged in to the account also share one budget per account, the row with
-- source '*': a guesser with many addresses is bounded too. A source that logged in to the
-- account with its password in the last `familiar` days is familiar and does not draw on that
-- shared budget, so the owner's usual places stay open whatever strangers do (the "familiar
-- location" split of smart lockouts).
--
-- An attempt is counted when it is admitted, before the password is checked: an aborted or
-- failed attempt stays counted with nothing left to release, a success gives its count back.
drop table if exists login_throttle;

create table login_guard (
    account       text        not null,
    source        text        not null,
    failures      integer     not null default 0,
    blocked_until timestamptz,
    updated_at    timestamptz not null default now(),
    constraint login_guard_pkey primary key (account, source)
);

create table login_familiar_source (
    account      text        not null,
    source       text        not null,
    last_success timestamptz not null default now(),
    constraint login_familiar_source_pkey primary key (account, source)
);

-- Counts one attempt on a row and says whether it may go ahead: null when admitted, else the
-- seconds to wait. After `lim` failures in a row each further attempt waits
-- `base * 2^(failures - lim)` seconds (at most `max`), one at a time; failures older than
-- `memory` seconds are forgotten.
create function login_guard_take(p_account text, p_source text, lim integer, base float8,
                                 max_secs float8, memory float8)
returns float8 language plpgsql as $$
declare
    row login_guard;
begin
    -- A refusal takes no lock: a flood of refused attempts on one account never queues.
    select * into row from login_guard where account = p_account and source = p_source;
    if found and row.blocked_until > now()
       and row.updated_at >= now() - make_interval(secs => memory) then
        return greatest(extract(epoch from row.blocked_until - now()), 1);
    end if;
    -- Creates or locks the row, in one statement.
    insert into login_guard (account, source) values (p_account, p_source)
        on conflict (account, source) do update set account = excluded.account
        returning * into row;
    if row.updated_at < now() - make_interval(secs => memory) then
        row.failures := 0;
        row.blocked_until := null;
    end if;
    if row.blocked_until is not null and row.blocked_until > now() then
        return greatest(extract(epoch from row.blocked_until - now()), 1);
    end if;
    update login_guard set
        failures = row.failures + 1,
        blocked_until = case when row.failures + 1 >= lim
            then now() + least(base * power(2, least(row.failures + 1 - lim, 30)), max_secs) * interval '1 second'
            else null end,
        updated_at = now()
     where account = p_account and source = p_source;
    return null;
end $$;

-- Whether `p_source` logged in to `p_account` with its password in the last `familiar_days`.
create function login_familiar(p_account text, p_source text, familiar_days float8)
returns boolean language sql stable as $$
    select exists (select 1 from login_familiar_source
                    where account = p_account and source = p_source
                      and last_success > now() - make_interval(days => familiar_days::integer))
$$;

-- Admits one password check for `p_account` from `p_source`, or returns the seconds to wait.
-- Unfamiliar sources also draw on the account's shared budget (`shared_lim`). Both rows are
-- taken in one transaction: a refusal by the second undoes the first.
create function login_admit(p_account text, p_source text, lim integer, shared_lim integer,
                            base float8, max_secs float8, memory float8, familiar_days float8)
returns float8 language plpgsql as $$
declare
    wait float8;
    familiar boolean;
begin
    familiar := login_familiar(p_account, p_source, familiar_days);
    wait := login_guard_take(p_account, p_source, lim, base, max_secs, memory);
    if wait is not null then
        return wait;
    end if;
    if not familiar then
        wait := login_guard_take(p_account, '*', shared_lim, base, max_secs, memory);
        if wait is not null then
            -- Give back what the source row took: this attempt does not happen.
            update login_guard set failures = greatest(failures - 1, 0)
             where account = p_account and source = p_source;
            return wait;
        end if;
    end if;
    return null;
end $$;

-- The admitted check succeeded: the source's failures end, the source becomes familiar, and the
-- shared budget gets this attempt back if it drew on it (its earlier failures stay counted).
create function login_succeeded(p_account text, p_source text, familiar_days float8) returns void
language plpgsql as $$
declare
    familiar boolean := login_familiar(p_account, p_source, familiar_days);
begin
    -- Rows are always locked in one order, the source's then the shared one ('*'), as
    -- login_admit does: two of these at once cannot deadlock.
    delete from login_guard where account = p_account and source = p_source;
    if not familiar then
        update login_guard set failures = greatest(failures - 1, 0)
         where account = p_account and source = '*';
    end if;
    -- Refreshed at most daily: most logins write nothing here.
    insert into login_familiar_source (account, source) values (p_account, p_source)
        on conflict (account, source) do update set last_success = now()
        where login_familiar_source.last_success < now() - interval '1 day';
end $$;

-- The admitted check did not happen (the hashing pool shed it): its counts are given back, and
-- nothing else changes. A back-off in force stays in force. Same lock order as above.
create function login_refund(p_account text, p_source text, familiar_days float8) returns void
language plpgsql as $$
declare
    familiar boolean := login_familiar(p_account, p_source, familiar_days);
begin
    update login_guard set failures = greatest(failures - 1, 0)
     where account = p_account and source = p_source;
    if not familiar then
        update login_guard set failures = greatest(failures - 1, 0)
         where account = p_account and source = '*';
    end if;
end $$;
