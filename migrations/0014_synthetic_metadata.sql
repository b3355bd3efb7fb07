-- Event metadata is a map of strings (cqrs-es reads it as such when it loads an aggregate); the
-- data generator of migration-0012 times wrote `synthetic` as a JSON boolean, so the accounts it
-- generated could not be loaded (a login answered 500). Store it as the string "true".
update events
   set metadata = jsonb_set(metadata, '{synthetic}', '"true"')
 where metadata -> 'synthetic' = 'true'::jsonb;
