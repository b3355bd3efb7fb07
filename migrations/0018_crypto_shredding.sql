-- Crypto-shredding (issue #14): personal data in events is sealed under a per-person data key;
-- deleting an account destroys the key, and with it every copy of that data.

-- One data key per person, wrapped under the key-encryption key (DATA_KEY_FILE), so a copy of
-- the database alone opens nothing. A deleted person's row is a tombstone: the key is gone
-- (`wrapped` null) and the row stays, so no writer can ever store a new key for them.
create table user_data_key (
    user_id    uuid        not null constraint user_data_key_pkey primary key,
    wrapped    bytea,
    created_at timestamptz not null default now(),
    deleted_at timestamptz,
    constraint user_data_key_tombstone check ((wrapped is null) = (deleted_at is not null))
);

-- Which key-encryption key this database's data keys are wrapped under (a keyed check value):
-- a process started with another DATA_KEY_FILE refuses to start instead of reading every
-- personal value as erased.
create table data_key_check (
    id    boolean not null default true constraint data_key_check_pkey primary key
                  constraint data_key_check_one_row check (id),
    check_value bytea not null
);

-- Events written before crypto-shredding (no `subject` in their metadata): what
-- `accounts erasure migrate` and a deletion look through. Empty once every such event with
-- personal data is sealed; new events always name their subject.
create index events_unsealed on events (global_position) where not (metadata ? 'subject');

-- Identities are held as keyed hashes of their canonical form (see `pii::Vault::identity_hash`),
-- not in clear. Rows claimed before hold the canonical form until the service re-keys them at
-- start (`hashed` false), which it does before it serves.
alter table user_identities add column hashed boolean not null default false;
create index user_identities_not_hashed on user_identities (kind) where not hashed;

-- The claim: the writer passes the keyed hashes in the transient fields `email_claim` and
-- `username_claim` of the `Registered` payload, which are taken out here before the row is
-- stored (the event keeps only the sealed address). Events written before pass none and claim
-- their clear keys as before (re-keyed at the next start).
create or replace function user_identities_claim() returns trigger language plpgsql as $$
declare
    body jsonb;
    email_key text;
    username_key text;
    hashed boolean;
begin
    if new.aggregate_type <> 'User' or new.event_type <> 'Registered' then
        return new;
    end if;
    body := new.payload -> 'Registered';
    hashed := body ? 'email_claim';
    if hashed then
        email_key := body ->> 'email_claim';
        username_key := body ->> 'username_claim';
        new.payload := new.payload #- '{Registered,email_claim}' #- '{Registered,username_claim}';
    else
        email_key := coalesce(nullif(body ->> 'email_key', ''), lower(body ->> 'email'));
        username_key := coalesce(nullif(body ->> 'username_key', ''), lower(body ->> 'username'));
    end if;
    begin
        insert into user_identities (user_id, kind, value, canonical, hashed)
            values (new.aggregate_id::uuid, 'email', email_key, body ? 'email_key' or hashed, hashed);
    exception when unique_violation then
        raise exception 'email already registered' using errcode = 'AC001';
    end;
    begin
        insert into user_identities (user_id, kind, value, canonical, hashed)
            values (new.aggregate_id::uuid, 'username', username_key, body ? 'username_key' or hashed, hashed);
    exception when unique_violation then
        raise exception 'username already taken' using errcode = 'AC002';
    end;
    return new;
end $$;

-- A farewell mail's address, kept (sealed under the key-encryption key) from the deletion until
-- the mailer has sent it: the data key that sealed the address in the events is gone by then.
create table erasure_notice (
    user_id    uuid        not null constraint erasure_notice_pkey primary key,
    sealed     bytea       not null,
    created_at timestamptz not null default now()
);

-- `AccountDeleted` erases, in the statement that appends it: the data key (a tombstone stays;
-- and so every sealed
-- value of the person, everywhere), the identities (the address and username are free again),
-- the credentials, second factors and passkeys, the guessing bound's rows for the account, and
-- the recipients of the mails already sent.
create function account_deleted_erase() returns trigger language plpgsql as $$
declare
    subject uuid;
begin
    if new.aggregate_type <> 'User' or new.event_type <> 'AccountDeleted' then
        return new;
    end if;
    subject := new.aggregate_id::uuid;
    insert into user_data_key (user_id, wrapped, deleted_at) values (subject, null, now())
        on conflict (user_id) do update set wrapped = null, deleted_at = now();
    delete from login_guard
     where account in (select value from user_identities where user_id = subject and kind = 'email')
        or account = 'second-factor:' || subject::text;
    delete from login_familiar_source
     where account in (select value from user_identities where user_id = subject and kind = 'email')
        or account = 'second-factor:' || subject::text;
    delete from user_identities where user_id = subject;
    delete from credential where user_id = subject;
    delete from mfa_totp where user_id = subject;
    delete from mfa_recovery_code where user_id = subject;
    delete from passkey where user_id = subject;
    delete from webauthn_ceremony where user_id = subject;
    update mail_sent set recipient = '', event = null, last_error = null
     where event_id like 'User:' || subject::text || ':%';
    return new;
end $$;

create trigger account_deleted_erase after insert on events
    for each row execute function account_deleted_erase();

-- The profile read model keeps a deleted account's row without its personal data, so that
-- counts stay right; `deleted_at` says when.
alter table profile add column deleted_at timestamptz;

-- Time travel in SQL cannot open sealed values: personal fields that are sealed come out null
-- (`accounts user-at` opens them for an operator while the account exists).
create or replace function analytics.profile_as_of(p_user uuid, p_at timestamptz)
returns table (user_id uuid, username text, email text, is_active boolean, country text,
               profession text, bio text, thoughts text, profile_img text)
language sql stable security definer set search_path = pg_catalog, public as $$
    with ev as (
        select event_type, payload, sequence from public.events
         where aggregate_type = 'User' and aggregate_id = p_user::text and recorded_at <= p_at
    ), field(name) as (
        values ('country'), ('profession'), ('bio'), ('thoughts'), ('profile_img')
    ), latest as (
        select f.name,
               (select e.payload -> 'ProfileUpdated' -> 'changes' ->> f.name
                  from ev e
                 where e.event_type = 'ProfileUpdated'
                   and e.payload -> 'ProfileUpdated' -> 'changes' ? f.name
                 order by e.sequence desc limit 1) as value
          from field f
    ), clear(name, value) as (
        select name, case when value like 'pii:v1:%' then null else coalesce(value, '') end
          from latest
    )
    select p_user,
           case when r.payload -> 'Registered' ->> 'username' like 'pii:v1:%' then null
                else r.payload -> 'Registered' ->> 'username' end,
           case when r.payload -> 'Registered' ->> 'email' like 'pii:v1:%' then null
                else r.payload -> 'Registered' ->> 'email' end,
           exists (select 1 from ev where event_type = 'Activated'),
           (select value from clear where name = 'country'),
           (select value from clear where name = 'profession'),
           (select value from clear where name = 'bio'),
           (select value from clear where name = 'thoughts'),
           (select value from clear where name = 'profile_img')
      from ev r
     where r.event_type = 'Registered'
       and not exists (select 1 from ev where event_type = 'AccountDeleted')
$$;

-- Where `accounts erasure migrate` (sealing events written in clear) has got to.
create table erasure_migration (
    id       boolean     not null default true constraint erasure_migration_pkey primary key
                         constraint erasure_migration_one_row check (id),
    position bigint      not null default 0,
    updated_at timestamptz not null default now()
);
insert into erasure_migration default values;
