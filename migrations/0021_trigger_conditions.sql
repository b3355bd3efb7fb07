-- Issue #12: the row triggers on `events` that act on one event type name it in their WHEN
-- clause, so that Postgres calls no PL/pgSQL function, and queues no after-trigger event, for
-- every other event (a login's `Started`, each refresh, each profile update). The functions keep
-- their own checks; only the calls that returned at once are gone. Names (and so the order in
-- which same-timing triggers fire) stay as they were.
drop trigger user_identities_claim on events;
create trigger user_identities_claim before insert on events
    for each row when (new.aggregate_type = 'User' and new.event_type = 'Registered')
    execute function user_identities_claim();

drop trigger account_deleted_erase on events;
create trigger account_deleted_erase after insert on events
    for each row when (new.aggregate_type = 'User' and new.event_type = 'AccountDeleted')
    execute function account_deleted_erase();
