-- The event store: postgres-es's schema plus three columns that postgres-es never names, so their
-- defaults fill them. Readers follow (transaction_id, global_position) so that an event whose
-- transaction commits late is never skipped (see ARCHITECTURE.md §6).
create table events (
    aggregate_type  text        not null,
    aggregate_id    text        not null,
    sequence        bigint      not null constraint events_sequence_check check (sequence >= 0),
    event_type      text        not null,
    event_version   text        not null,
    payload         jsonb       not null,
    metadata        jsonb       not null,
    global_position bigint      generated always as identity,
    transaction_id  xid8        not null default pg_current_xact_id(),
    recorded_at     timestamptz not null default now(),
    constraint events_pkey primary key (aggregate_type, aggregate_id, sequence)
);

create index events_reader_order on events (transaction_id, global_position);

-- Wakes every process's readers (relay, projectors) once per appending statement.
create function events_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('events_appended', '');
    return null;
end $$;

create trigger events_notify after insert on events
    for each statement execute function events_notify();
