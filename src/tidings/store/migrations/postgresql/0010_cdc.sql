-- Change data capture: per slot, the end LSN of the last source transaction whose events were
-- committed to the outbox in the same transaction as this row (docs/decisions/0021).
CREATE TABLE tidings_cdc_checkpoints (
    slot           TEXT        PRIMARY KEY,
    lsn            BIGINT      NOT NULL,
    commit_time    TEXT,
    translated     BIGINT      NOT NULL DEFAULT 0,
    dropped        BIGINT      NOT NULL DEFAULT 0,
    dead_lettered  BIGINT      NOT NULL DEFAULT 0,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
