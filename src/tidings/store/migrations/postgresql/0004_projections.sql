-- Projections: one row per read model a projector keeps. Its position lives in tidings_checkpoints
-- ("projection:<name>", and "projection:<name>:rebuild" while a rebuild runs), written in the
-- same transaction as the read-model rows.
CREATE TABLE tidings_projections (
    name                TEXT        PRIMARY KEY,
    -- The live read-model tables, comma-separated (for operators and reconciliation).
    tables              TEXT        NOT NULL,
    -- Hash of the DDL the live tables were created with: when the code's differs, they need a rebuild.
    fingerprint         TEXT        NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Set while a rebuild fills <table>__rebuild (left set if it was interrupted); the swap checks it.
    rebuild_token       TEXT,
    rebuild_started_at  TIMESTAMPTZ,
    rebuilt_at          TIMESTAMPTZ,
    -- The event the projection is stuck on, if its handler or its write keeps failing.
    failed_position     BIGINT,
    failed_at           TIMESTAMPTZ,
    last_error          TEXT
);
