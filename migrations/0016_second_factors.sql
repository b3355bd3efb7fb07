-- Second-factor secrets, beside the event store like the password hashes: events only name them
-- by id (`TotpSetupStarted.enrolment_id`, `RecoveryCodesGenerated.batch_id`).

-- One TOTP secret per enrolment, encrypted (XChaCha20-Poly1305 under MFA_KEY_FILE's key, the
-- enrolment id as associated data). `last_step` is the newest 30-second step a code was
-- accepted for: a code is good once.
create table mfa_totp (
    enrolment_id uuid        primary key,
    user_id      uuid        not null,
    secret       bytea       not null,
    last_step    bigint      not null default 0,
    created_at   timestamptz not null default now()
);
create index mfa_totp_user on mfa_totp (user_id);

-- Recovery codes as keyed hashes (HMAC-SHA-256 under MFA_KEY_FILE's key); a used code keeps its
-- row with `used_at` set.
create table mfa_recovery_code (
    batch_id   uuid        not null,
    user_id    uuid        not null,
    code_hash  bytea       not null,
    used_at    timestamptz,
    primary key (batch_id, code_hash)
);
create index mfa_recovery_code_user on mfa_recovery_code (user_id);
