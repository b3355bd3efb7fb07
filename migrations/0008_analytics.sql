-- The analysts' interface: views in their own schema over the read models, and a read-only role
-- that can read this schema and nothing else (not the events, not user_identities, not any
-- credential). Documented column by column in docs/ANALYTICS.md.

create index user_history_event_time on user_history (event, occurred_at);

create schema analytics;
comment on schema analytics is 'Read-only views for analysts; see docs/ANALYTICS.md.';

create view analytics.users as
select user_id, username, email, is_active, date_joined, last_login, country, profession
  from public.profile;
comment on view analytics.users is 'One row per account (profile read model), without token state.';

create view analytics.user_history as
select user_id, position, event, occurred_at, ip, user_agent, details
  from public.user_history;
comment on view analytics.user_history is 'One row per history event of a user; position orders them.';

create view analytics.daily_signups as
select (occurred_at at time zone 'UTC')::date as day, count(*) as signups
  from public.user_history
 where event = 'registered'
 group by 1;
comment on view analytics.daily_signups is 'Registrations per UTC day.';

create view analytics.activation_funnel as
with registered as (
    select user_id, occurred_at as registered_at
      from public.user_history where event = 'registered'
), activated as (
    select user_id, min(occurred_at) as activated_at
      from public.user_history where event = 'activated' group by user_id
)
select (r.registered_at at time zone 'UTC')::date as cohort_day,
       count(*) as registered,
       count(a.user_id) as activated,
       round(100.0 * count(a.user_id) / count(*), 1) as activation_rate_pct,
       percentile_cont(0.5) within group (
           order by extract(epoch from a.activated_at - r.registered_at)) as median_seconds_to_activate
  from registered r
  left join activated a using (user_id)
 group by 1;
comment on view analytics.activation_funnel is 'Per registration day: registered, activated, rate, median time to activate.';

create view analytics.daily_logins as
select (occurred_at at time zone 'UTC')::date as day,
       count(*) filter (where event = 'logged_in') as logins,
       count(*) filter (where event = 'login_failed') as failed_logins,
       count(distinct user_id) filter (where event = 'logged_in') as users_logged_in
  from public.user_history
 where event in ('logged_in', 'login_failed')
 group by 1;
comment on view analytics.daily_logins is 'Successful and failed password logins per UTC day.';

create view analytics.daily_active_users as
select (occurred_at at time zone 'UTC')::date as day, count(distinct user_id) as active_users
  from public.user_history
 where event in ('logged_in', 'token_refreshed', 'profile_updated', 'password_changed')
 group by 1;
comment on view analytics.daily_active_users is 'Users who logged in, refreshed a token, updated their profile or changed their password, per UTC day.';

create view analytics.monthly_active_users as
select date_trunc('month', occurred_at at time zone 'UTC')::date as month,
       count(distinct user_id) as active_users
  from public.user_history
 where event in ('logged_in', 'token_refreshed', 'profile_updated', 'password_changed')
 group by 1;
comment on view analytics.monthly_active_users is 'As daily_active_users, per UTC calendar month.';

-- Time travel: the profile of one user as it stood at a past moment, folded from the event store.
-- SECURITY DEFINER so analysts get the profile fields without any access to the events.
create function analytics.profile_as_of(p_user uuid, p_at timestamptz)
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
    )
    select p_user,
           r.payload -> 'Registered' ->> 'username',
           r.payload -> 'Registered' ->> 'email',
           exists (select 1 from ev where event_type = 'Activated'),
           coalesce((select value from latest where name = 'country'), ''),
           coalesce((select value from latest where name = 'profession'), ''),
           coalesce((select value from latest where name = 'bio'), ''),
           coalesce((select value from latest where name = 'thoughts'), ''),
           coalesce((select value from latest where name = 'profile_img'), '')
      from ev r
     where r.event_type = 'Registered'
$$;
comment on function analytics.profile_as_of(uuid, timestamptz) is 'A user''s profile as it stood at a past moment.';

-- The read-only role. Roles are cluster-wide: create it once, whichever database migrates first.
do $$
begin
    create role accounts_analyst nologin;
exception when duplicate_object or unique_violation then
    null;
end $$;

revoke all on function analytics.profile_as_of(uuid, timestamptz) from public;
grant usage on schema analytics to accounts_analyst;
grant select on all tables in schema analytics to accounts_analyst;
grant execute on function analytics.profile_as_of(uuid, timestamptz) to accounts_analyst;
