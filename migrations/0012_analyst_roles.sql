-- Each deployment its own analyst roles. Roles are cluster-wide: one `accounts_analyst` shared
-- by every database on a server let a login made for one deployment read another's analytics.
-- Now the roles are named after the database (`<database>_analyst`, which is `accounts_analyst`
-- for the default database `accounts`), only they and the service may connect to it, and a
-- second role sees pseudonymised data only. See docs/ANALYTICS.md.

-- A secret of this deployment that pseudonyms are keyed with; analysts cannot read it, so they
-- cannot compute a pseudonym from a user id or reverse one.
create table analytics_pseudonym_key (
    key text not null
);
insert into analytics_pseudonym_key (key)
    values (gen_random_uuid()::text || gen_random_uuid()::text);

-- The views read the key with their owner's rights (a view's table access is checked against its
-- owner), so no function needs granting.
create view analytics.users_pseudonymous as
select encode(sha256(convert_to((select key from public.analytics_pseudonym_key) || p.user_id::text, 'UTF8')), 'hex') as person,
       p.is_active, p.date_joined, p.last_login, p.country, p.profession
  from public.profile p;
comment on view analytics.users_pseudonymous is 'analytics.users without name, e-mail or id: person is a keyed hash of the id.';

create view analytics.user_history_pseudonymous as
select encode(sha256(convert_to((select key from public.analytics_pseudonym_key) || h.user_id::text, 'UTF8')), 'hex') as person,
       h.position, h.event, h.occurred_at,
       h.details - 'username' - 'email' - 'ip' - 'user_agent' as details
  from public.user_history h;
comment on view analytics.user_history_pseudonymous is 'analytics.user_history without IP, user agent, name or e-mail: person is a keyed hash of the id.';

do $$
declare
    db text := current_database();
    analyst text := current_database() || '_analyst';
    pseudonymous text := current_database() || '_analyst_pseudonymous';
begin
    if not exists (select from pg_roles where rolname = analyst) then
        execute format('create role %I nologin', analyst);
    end if;
    if not exists (select from pg_roles where rolname = pseudonymous) then
        execute format('create role %I nologin', pseudonymous);
    end if;
    -- Only the service's own role (the migrating one) and these roles connect to this database.
    execute format('grant connect on database %I to %I', db, current_user);
    execute format('revoke connect on database %I from public', db);
    execute format('grant connect on database %I to %I, %I', db, analyst, pseudonymous);
    execute format('grant usage on schema analytics to %I, %I', analyst, pseudonymous);
    execute format('grant select on all tables in schema analytics to %I', analyst);
    execute format('grant execute on function analytics.profile_as_of(uuid, timestamptz) to %I', analyst);
    execute format('grant select on analytics.users_pseudonymous, analytics.user_history_pseudonymous,
                           analytics.daily_signups, analytics.activation_funnel, analytics.daily_logins,
                           analytics.daily_active_users, analytics.monthly_active_users to %I',
                   pseudonymous);
    -- The role shared by every database before: out of this one unless it is this one's.
    if analyst <> 'accounts_analyst' and exists (select from pg_roles where rolname = 'accounts_analyst') then
        revoke all on all tables in schema analytics from accounts_analyst;
        revoke all on function analytics.profile_as_of(uuid, timestamptz) from accounts_analyst;
        revoke usage on schema analytics from accounts_analyst;
    end if;
end $$;
