-- Every row that belongs to an aggregate says whose it is: the tenant that created it (NULL on a
-- single-tenant platform). The journal and the outbox take it from the envelope they already
-- store, so writers send nothing more; state and snapshot rows get it from the unit of work. The
-- application refuses a command of one tenant on another's aggregate (docs/decisions/0018), and
-- these columns are also what the optional row-level security policies compare (tidings.store.row_security).
ALTER TABLE tidings_journal ADD COLUMN tenant TEXT GENERATED ALWAYS AS (envelope ->> 'tenant') STORED;
ALTER TABLE tidings_outbox ADD COLUMN tenant TEXT GENERATED ALWAYS AS (envelope ->> 'tenant') STORED;
ALTER TABLE tidings_aggregate_state ADD COLUMN tenant TEXT;
ALTER TABLE tidings_snapshots ADD COLUMN tenant TEXT;
