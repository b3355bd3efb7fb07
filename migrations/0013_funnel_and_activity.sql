-- Sign-up funnel questions the history could not answer, and active users kept by a projector.
--
-- New history entries (see docs/ANALYTICS.md): `activation_refused` (a mailed activation link
-- used too late, after a newer one, or on an active account; details.reason),
-- `login_refused` (the right password on an account not activated yet: the 403; details.reason),
-- `duplicate_registration_attempted` (someone registered the address again; at most one per
-- 10 minutes, as the owner's notice mail).

-- Active users per UTC day, ISO week and calendar month, kept by the `activity` projector: one
-- row per (period, user) the first time the user is active in it, and one counter row per period
-- (user_id = the nil UUID) that the same statement increments. Activity is what it was for
-- daily_active_users: a login, a token refresh, a profile update, a password change.
create table user_activity (
    kind text not null check (kind in ('day', 'week', 'month')),
    period date not null,
    user_id uuid not null,
    users bigint not null default 0,
    primary key (kind, period, user_id)
);
comment on table user_activity is 'Kept by the activity projector; read through analytics.*_active_users.';

create or replace view analytics.daily_active_users as
select period as day, users as active_users
  from public.user_activity
 where kind = 'day' and user_id = '00000000-0000-0000-0000-000000000000';

create or replace view analytics.monthly_active_users as
select period as month, users as active_users
  from public.user_activity
 where kind = 'month' and user_id = '00000000-0000-0000-0000-000000000000';

create view analytics.weekly_active_users as
select period as week, users as active_users
  from public.user_activity
 where kind = 'week' and user_id = '00000000-0000-0000-0000-000000000000';
comment on view analytics.weekly_active_users is 'As daily_active_users, per ISO week (Monday, UTC).';

create or replace view analytics.daily_logins as
select (occurred_at at time zone 'UTC')::date as day,
       count(*) filter (where event = 'logged_in') as logins,
       count(*) filter (where event = 'login_failed') as failed_logins,
       count(distinct user_id) filter (where event = 'logged_in') as users_logged_in,
       count(*) filter (where event = 'login_refused') as refused_inactive
  from public.user_history
 where event in ('logged_in', 'login_failed', 'login_refused')
 group by 1;
comment on view analytics.daily_logins is 'Password logins per UTC day: successful, failed (wrong password), refused (right password, account not activated: the 403).';

create view analytics.signup_funnel as
select (occurred_at at time zone 'UTC')::date as day,
       count(*) filter (where event = 'registered') as registrations,
       count(*) filter (where event = 'duplicate_registration_attempted') as duplicate_registrations,
       count(*) filter (where event = 'activation_link_sent') as activation_links_sent,
       count(*) filter (where event = 'activated') as activations,
       count(*) filter (where event = 'activation_refused' and details->>'reason' = 'expired') as activations_expired,
       count(*) filter (where event = 'activation_refused' and details->>'reason' = 'superseded') as activations_superseded,
       count(*) filter (where event = 'activation_refused' and details->>'reason' = 'already_active') as activations_repeated,
       count(*) filter (where event = 'login_refused') as logins_refused_inactive
  from public.user_history
 where event in ('registered', 'duplicate_registration_attempted', 'activation_link_sent',
                 'activated', 'activation_refused', 'login_refused')
 group by 1;
comment on view analytics.signup_funnel is 'Per UTC day, each step of sign-up and how it fails: registrations, duplicates, links sent, activations, refused activation links by reason, logins refused as inactive.';

do $$
declare
    analyst text := current_database() || '_analyst';
    pseudonymous text := current_database() || '_analyst_pseudonymous';
begin
    execute format('grant select on analytics.weekly_active_users, analytics.signup_funnel to %I, %I',
                   analyst, pseudonymous);
end $$;
