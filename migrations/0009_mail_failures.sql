-- Mail delivery faults: how often a mail was tried, why it last failed, and mails given up on
-- after the last attempt (listed and retried with `accounts mail failed` / `accounts mail retry`).
alter table mail_sent drop constraint mail_sent_status_check;
alter table mail_sent add constraint mail_sent_status_check
    check (status in ('sending', 'sent', 'failed'));
alter table mail_sent add column attempts integer not null default 0;
alter table mail_sent add column last_error text;
-- The published event, kept for mails that failed, so a retry needs nothing else.
alter table mail_sent add column event jsonb;
