-- Strongly consistent uniqueness of e-mail and username, claimed inside the append transaction.
-- A clash raises a custom SQLSTATE (never 23505, which postgres-es reports as an optimistic-lock
-- conflict): AC001 for a taken e-mail, AC002 for a taken username.
create table user_identities (
    user_id        uuid        not null,
    kind           text        not null constraint user_identities_kind_check check (kind in ('email', 'username')),
    value          text        not null,
    claimed_at     timestamptz not null default now(),
    constraint user_identities_pkey primary key (kind, value)
);

create index user_identities_user on user_identities (user_id);

create function user_identities_claim() returns trigger language plpgsql as $$
declare
    body jsonb;
begin
    if new.aggregate_type <> 'User' or new.event_type <> 'Registered' then
        return new;
    end if;
    body := new.payload -> 'Registered';
    begin
        insert into user_identities (user_id, kind, value)
            values (new.aggregate_id::uuid, 'email', lower(body ->> 'email'));
    exception when unique_violation then
        raise exception 'email already registered' using errcode = 'AC001';
    end;
    begin
        insert into user_identities (user_id, kind, value)
            values (new.aggregate_id::uuid, 'username', lower(body ->> 'username'));
    exception when unique_violation then
        raise exception 'username already taken' using errcode = 'AC002';
    end;
    return new;
end $$;

create trigger user_identities_claim before insert on events
    for each row execute function user_identities_claim();
