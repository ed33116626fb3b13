-- Every row that belongs to an aggregate says whose it is (see the PostgreSQL migration of the same
-- number). SQLite can add only VIRTUAL generated columns to an existing table: computed on read.
ALTER TABLE tidings_journal ADD COLUMN tenant TEXT GENERATED ALWAYS AS (json_extract(envelope, '$.tenant')) VIRTUAL;
ALTER TABLE tidings_outbox ADD COLUMN tenant TEXT GENERATED ALWAYS AS (json_extract(envelope, '$.tenant')) VIRTUAL;
ALTER TABLE tidings_aggregate_state ADD COLUMN tenant TEXT;
ALTER TABLE tidings_snapshots ADD COLUMN tenant TEXT;
