-- Password hashes never enter the event store. Each hash is stored once under a random id;
-- the User stream names the current one (Registered / PasswordChanged / PasswordReset carry
-- credential_id), so which hash is live is decided by the events alone.
create table credential (
    id            uuid        not null constraint credential_pkey primary key,
    user_id       uuid        not null,
    password_hash text        not null,
    created_at    timestamptz not null default now()
);

create index credential_user on credential (user_id);
