-- user_history becomes a partitioned table with one partition holding every row, so that a
-- rebuild swaps in its copy by detaching the old partition and attaching the copy (a catalogue
-- change under a short lock) instead of deleting and re-inserting every row with its indexes.
-- Readers and the analysts' views keep naming `public.user_history`, the partitioned parent.
do $$
declare
    dependent record;
    views text[] := '{}';
    definitions text[] := '{}';
begin
    -- The views reading the table follow it by identity, not by name: remember their text so
    -- they can be pointed at the new parent once it has the name.
    for dependent in
        select distinct c.oid::regclass::text as name, pg_get_viewdef(c.oid) as definition
          from pg_depend d
          join pg_rewrite r on r.oid = d.objid
          join pg_class c on c.oid = r.ev_class
         where d.refobjid = 'public.user_history'::regclass
           and c.oid <> 'public.user_history'::regclass
    loop
        views := views || dependent.name;
        definitions := definitions || dependent.definition;
    end loop;

    alter table public.user_history rename to user_history_data;
    alter index public.user_history_pkey rename to user_history_data_pkey;
    alter index public.user_history_user_position rename to user_history_data_user_position;
    alter index public.user_history_event_time rename to user_history_data_event_time;

    create table public.user_history (
        user_id     uuid        not null,
        -- global_position of the event this row comes from: unique, and the paging cursor.
        position    bigint      not null,
        event       text        not null,
        occurred_at timestamptz not null,
        ip          text,
        user_agent  text,
        details     jsonb       not null default '{}'::jsonb,
        constraint user_history_pkey primary key (position)
    ) partition by range (position);
    create index user_history_user_position on public.user_history (user_id, position desc);
    create index user_history_event_time on public.user_history (event, occurred_at);
    -- The existing indexes match the parent's, so they are attached, not rebuilt.
    alter table public.user_history
        attach partition public.user_history_data for values from (minvalue) to (maxvalue);

    for i in 1 .. coalesce(array_length(views, 1), 0) loop
        execute format('create or replace view %s as %s', views[i], definitions[i]);
    end loop;
end $$;

comment on table user_history is
    'The user-history read model (partitioned: one partition, swapped whole by a rebuild).';
