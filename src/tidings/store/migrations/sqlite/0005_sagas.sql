-- Running saga instances: one row per (saga type, correlation key). The version guards every
-- update (UPDATE ... WHERE version = loaded), so a racing update of one instance is detected.
CREATE TABLE tidings_sagas (
    saga_type       TEXT    NOT NULL,
    saga_key        TEXT    NOT NULL,
    saga_id         TEXT    NOT NULL UNIQUE,
    version         INTEGER NOT NULL,
    state           TEXT    NOT NULL,
    steps           TEXT    NOT NULL,
    history         TEXT    NOT NULL,
    correlation_id  TEXT    NOT NULL,
    started_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL,
    PRIMARY KEY (saga_type, saga_key)
) WITHOUT ROWID;

-- Finished instances, moved here in the transaction that completed them: final state, outcome
-- (completed or compensated) and a summary of the messages they handled. Never deleted by tidings.
CREATE TABLE tidings_saga_archive (
    saga_id         TEXT    PRIMARY KEY,
    saga_type       TEXT    NOT NULL,
    saga_key        TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    outcome         TEXT    NOT NULL,
    reason          TEXT,
    state           TEXT    NOT NULL,
    history         TEXT    NOT NULL,
    correlation_id  TEXT    NOT NULL,
    started_at      TEXT    NOT NULL,
    completed_at    TEXT    NOT NULL
) WITHOUT ROWID;
CREATE INDEX tidings_saga_archive_key ON tidings_saga_archive (saga_type, saga_key);

-- Durable deadlines: a message to deliver to one saga instance at due_at. Fired, cancelled and
-- parked rows stay (marked) as the instance's record; the scheduler reads pending ones only.
CREATE TABLE tidings_saga_deadlines (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    deadline_id      TEXT    NOT NULL UNIQUE,
    saga_type        TEXT    NOT NULL,
    saga_key         TEXT    NOT NULL,
    saga_id          TEXT    NOT NULL,
    message_type     TEXT    NOT NULL,
    schema_version   INTEGER NOT NULL,
    envelope         TEXT    NOT NULL,
    payload          TEXT    NOT NULL,
    due_at           TEXT    NOT NULL,
    created_at       TEXT    NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT,
    last_error       TEXT,
    fired_at         TEXT,
    cancelled_at     TEXT,
    cancel_reason    TEXT,
    parked_at        TEXT
);
-- The scheduler's query walks pending rows by due time; this index holds nothing else.
CREATE INDEX tidings_saga_deadlines_due ON tidings_saga_deadlines (due_at)
    WHERE fired_at IS NULL AND cancelled_at IS NULL AND parked_at IS NULL;
-- Cancelling (explicitly, or all of them when the saga completes) looks up an instance's open rows.
CREATE INDEX tidings_saga_deadlines_saga ON tidings_saga_deadlines (saga_id)
    WHERE fired_at IS NULL AND cancelled_at IS NULL;
