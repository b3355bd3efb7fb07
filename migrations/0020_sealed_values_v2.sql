-- Personal values are sealed in a second format (`pii:v2:`, AES-256-GCM-SIV; see
-- projections/src/pii.rs) and every personal value of an event that names its subject is sealed,
-- whatever it looks like. Time travel in SQL therefore hides the personal fields of any event that
-- names a subject, rather than the values that start with `pii:v1:`.
create or replace function analytics.profile_as_of(p_user uuid, p_at timestamptz)
returns table (user_id uuid, username text, email text, is_active boolean, country text,
               profession text, bio text, thoughts text, profile_img text)
language sql stable security definer set search_path = pg_catalog, public as $$
    with ev as (
        select event_type, payload, sequence, metadata ? 'subject' as sealed from public.events
         where aggregate_type = 'User' and aggregate_id = p_user::text and recorded_at <= p_at
    ), field(name) as (
        values ('country'), ('profession'), ('bio'), ('thoughts'), ('profile_img')
    ), latest as (
        select f.name, last.value, last.sealed
          from field f
          left join lateral (
                select e.payload -> 'ProfileUpdated' -> 'changes' ->> f.name as value, e.sealed
                  from ev e
                 where e.event_type = 'ProfileUpdated'
                   and e.payload -> 'ProfileUpdated' -> 'changes' ? f.name
                 order by e.sequence desc limit 1) last on true
    ), clear(name, value) as (
        select name, case when sealed then null else coalesce(value, '') end
          from latest
    )
    select p_user,
           case when r.sealed then null else r.payload -> 'Registered' ->> 'username' end,
           case when r.sealed then null else r.payload -> 'Registered' ->> 'email' end,
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
