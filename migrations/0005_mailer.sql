-- One row per event the mailer has handled, keyed by the event id of the published message, so a
-- redelivered message is not mailed twice.
create table mail_sent (
    event_id    text        not null constraint mail_sent_pkey primary key,
    kind        text        not null,
    recipient   text        not null,
    status      text        not null constraint mail_sent_status_check check (status in ('sending', 'sent')),
    claimed_at  timestamptz not null default now(),
    sent_at     timestamptz
);
