-- Per-account login back-off, keyed by the lower-cased e-mail (known or not, so it reveals
-- nothing). Attempts are admitted atomically on this row: `in_flight` counts verifications under
-- way, so parallel attempts cannot exceed the limit.
create table login_throttle (
    key           text        not null constraint login_throttle_pkey primary key,
    failures      integer     not null default 0,
    in_flight     integer     not null default 0,
    blocked_until timestamptz,
    updated_at    timestamptz not null default now()
);
