-- Passkeys (WebAuthn credentials) beside the event store: events only name them by id
-- (`PasskeyRegistered.passkey_id`). `passkey` is webauthn-rs's credential record (public key,
-- signature counter): nothing in it is secret.
create table passkey (
    passkey_id    uuid        primary key,
    user_id       uuid        not null,
    credential_id bytea       not null unique,
    passkey       jsonb       not null,
    created_at    timestamptz not null default now(),
    last_used_at  timestamptz
);
create index passkey_user on passkey (user_id);

-- A WebAuthn ceremony in flight: the challenge state between its start and its finish, used
-- once (deleted by the finish that reads it) and only until `expires_at`.
create table webauthn_ceremony (
    ceremony_id uuid        primary key,
    purpose     text        not null,
    user_id     uuid,
    session_id  uuid,
    state       jsonb       not null,
    expires_at  timestamptz not null
);
create index webauthn_ceremony_expiry on webauthn_ceremony (expires_at);
