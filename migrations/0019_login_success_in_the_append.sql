-- Issue #12: the guessing bound's record of a right password (`login_succeeded`: the source's
-- failures cleared, the source familiar) rides in the statement that appends the login's first
-- session event instead of a transaction of its own. The writer passes the account (the
-- e-mail's keyed hash), the source (the client network) and the familiarity window in transient
-- metadata entries, which are taken out of the row here before it is stored: they are never in
-- an event, a message or a read model.
create function events_login_succeeded() returns trigger language plpgsql as $$
begin
    -- Not for an account deleted meanwhile: its guard rows are gone and stay gone.
    if exists (select 1 from user_identities
                where kind = 'email' and value = new.metadata ->> 'guard_account') then
        perform login_succeeded(new.metadata ->> 'guard_account', new.metadata ->> 'guard_source',
                                (new.metadata ->> 'guard_familiar_days')::float8);
    end if;
    new.metadata := new.metadata - 'guard_account' - 'guard_source' - 'guard_familiar_days';
    return new;
end $$;

create trigger events_login_succeeded before insert on events
    for each row when (new.metadata ? 'guard_account')
    execute function events_login_succeeded();
