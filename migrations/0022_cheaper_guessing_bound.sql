-- Issue #12: the guessing bound's statements cost less on every login.
--
-- `login_familiar` was a SQL function called from PL/pgSQL: Postgres 15 plans such a call's body
-- anew every time (twice per login). In PL/pgSQL its plan is cached per connection.
create or replace function login_familiar(p_account text, p_source text, familiar_days float8)
returns boolean language plpgsql stable as $$
begin
    return exists (select 1 from login_familiar_source
                    where account = p_account and source = p_source
                      and last_success > now() - make_interval(days => familiar_days::integer));
end $$;

-- Until when an account and source wait after `failures` failures in a row: not at all below
-- `lim`, then `base * 2^(failures - lim)` seconds, at most `max_secs`.
create function login_guard_block(failures integer, lim integer, base float8, max_secs float8)
returns timestamptz language sql stable as $$
    select case when failures >= lim
                then now() + least(base * power(2, least(failures - lim, 30)), max_secs) * interval '1 second'
           end
$$;

-- Counting an attempt is one statement instead of a locking upsert and an update: the upsert
-- writes the counted row itself. A row that a concurrent attempt blocked meanwhile is left as it
-- is (the upsert's condition), and the wait is read from it.
create or replace function login_guard_take(p_account text, p_source text, lim integer, base float8,
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
    -- Counted in the statement that creates or locks the row: `f` is the count with this
    -- attempt (1 on a new row or one whose failures are older than `memory`).
    insert into login_guard as g (account, source, failures, blocked_until, updated_at)
    values (p_account, p_source, 1, login_guard_block(1, lim, base, max_secs), now())
    on conflict (account, source) do update
       set (failures, blocked_until, updated_at) =
           (select f, login_guard_block(f, lim, base, max_secs), now()
              from (select case when g.updated_at < now() - make_interval(secs => memory) then 1
                                else g.failures + 1 end as f) counted)
     where g.blocked_until is null or g.blocked_until <= now()
        or g.updated_at < now() - make_interval(secs => memory);
    if found then
        return null;
    end if;
    select * into row from login_guard where account = p_account and source = p_source;
    return greatest(extract(epoch from row.blocked_until - now()), 1);
end $$;

-- A right password resets its source's row instead of deleting it: the next attempt updates the
-- row in place (a heap-only update) rather than inserting a row and an index entry, and no dead
-- row is left for every login. Rows are pruned 24 hours after their last attempt as before. The
-- familiar source's row is read once, and written only when it is new or a day old: the upsert
-- locked (and so wrote) the row on every login even when it changed nothing.
create or replace function login_succeeded(p_account text, p_source text, familiar_days float8) returns void
language plpgsql as $$
declare
    last timestamptz;
begin
    select last_success into last from login_familiar_source
     where account = p_account and source = p_source;
    -- Rows are always locked in one order, the source's then the shared one ('*'), as
    -- login_admit does: two of these at once cannot deadlock.
    update login_guard set failures = 0, blocked_until = null, updated_at = now()
     where account = p_account and source = p_source;
    if last is null or last <= now() - make_interval(days => familiar_days::integer) then
        update login_guard set failures = greatest(failures - 1, 0)
         where account = p_account and source = '*';
    end if;
    if last is null or last < now() - interval '1 day' then
        insert into login_familiar_source (account, source) values (p_account, p_source)
            on conflict (account, source) do update set last_success = now();
    end if;
end $$;
