-- The user-history read model: one row per history event of a user, newest last by position.
create table user_history (
    user_id     uuid        not null,
    -- global_position of the event this row comes from: unique, and the paging cursor.
    position    bigint      not null constraint user_history_pkey primary key,
    event       text        not null,
    occurred_at timestamptz not null,
    ip          text,
    user_agent  text,
    details     jsonb       not null default '{}'::jsonb
);

create index user_history_user_position on user_history (user_id, position desc);

insert into reader_checkpoint (name) values ('history');
