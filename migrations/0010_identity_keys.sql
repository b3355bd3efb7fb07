-- One canonical form of every identifier (issue: case folding differed between the uniqueness
-- claim, Postgres `lower()`, and the look-ups in Rust). The keys are now computed once, in Rust
-- (`aggregates::values::email_key` / `username_key`: NFKC, full case folding, and for usernames
-- the UTS #39 confusable skeleton), carried by the `Registered` event, and claimed here as they
-- are. Rows claimed before this migration are re-keyed by the service at start
-- (`store::rekey_identities`); `canonical` says which rows hold a Rust-computed key.
alter table user_identities add column canonical boolean not null default false;
-- What the re-keying at every start looks for: empty once done, so the look costs nothing.
create index user_identities_not_canonical on user_identities (kind, value) where not canonical;

create or replace function user_identities_claim() returns trigger language plpgsql as $$
declare
    body jsonb;
    email_key text;
    username_key text;
begin
    if new.aggregate_type <> 'User' or new.event_type <> 'Registered' then
        return new;
    end if;
    body := new.payload -> 'Registered';
    email_key := coalesce(nullif(body ->> 'email_key', ''), lower(body ->> 'email'));
    username_key := coalesce(nullif(body ->> 'username_key', ''), lower(body ->> 'username'));
    begin
        insert into user_identities (user_id, kind, value, canonical)
            values (new.aggregate_id::uuid, 'email', email_key, body ? 'email_key');
    exception when unique_violation then
        raise exception 'email already registered' using errcode = 'AC001';
    end;
    begin
        insert into user_identities (user_id, kind, value, canonical)
            values (new.aggregate_id::uuid, 'username', username_key, body ? 'username_key');
    exception when unique_violation then
        raise exception 'username already taken' using errcode = 'AC002';
    end;
    return new;
end $$;
