-- Change data capture: per slot, the end LSN of the last source transaction whose events were
-- committed to the outbox in the same transaction as this row (docs/decisions/0021).
CREATE TABLE tidings_cdc_checkpoints (
    slot           TEXT    PRIMARY KEY,
    lsn            INTEGER NOT NULL,
    commit_time    TEXT,
    translated     INTEGER NOT NULL DEFAULT 0,
    dropped        INTEGER NOT NULL DEFAULT 0,
    dead_lettered  INTEGER NOT NULL DEFAULT 0,
    updated_at     TEXT    NOT NULL DEFAULT CURRENT_TIMESTAMP
);
