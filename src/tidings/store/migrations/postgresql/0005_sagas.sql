-- Running saga instances: one row per (saga type, correlation key). The version guards every
-- update (UPDATE ... WHERE version = loaded), so a racing update of one instance is detected.
CREATE TABLE tidings_sagas (
    saga_type       TEXT        NOT NULL,
    saga_key        TEXT        NOT NULL,
    saga_id         UUID        NOT NULL UNIQUE,
    version         INTEGER     NOT NULL,
    state           JSONB       NOT NULL,
    steps           JSONB       NOT NULL,
    history         JSONB       NOT NULL,
    correlation_id  TEXT        NOT NULL,
    started_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (saga_type, saga_key)
);

-- Finished instances, moved here in the transaction that completed them: final state, outcome
-- (completed or compensated) and a summary of the messages they handled. Never deleted by tidings.
CREATE TABLE tidings_saga_archive (
    saga_id         UUID        PRIMARY KEY,
    saga_type       TEXT        NOT NULL,
    saga_key        TEXT        NOT NULL,
    version         INTEGER     NOT NULL,
    outcome         TEXT        NOT NULL,
    reason          TEXT,
    state           JSONB       NOT NULL,
    history         JSONB       NOT NULL,
    correlation_id  TEXT        NOT NULL,
    started_at      TIMESTAMPTZ NOT NULL,
    completed_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX tidings_saga_archive_key ON tidings_saga_archive (saga_type, saga_key);

-- Durable deadlines: a message to deliver to one saga instance at due_at. Fired, cancelled and
-- parked rows stay (marked) as the instance's record; the scheduler reads pending ones only.
CREATE TABLE tidings_saga_deadlines (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    deadline_id      UUID        NOT NULL UNIQUE,
    saga_type        TEXT        NOT NULL,
    saga_key         TEXT        NOT NULL,
    saga_id          UUID        NOT NULL,
    message_type     TEXT        NOT NULL,
    schema_version   INTEGER     NOT NULL,
    envelope         JSONB       NOT NULL,
    payload          JSONB       NOT NULL,
    due_at           TIMESTAMPTZ NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    attempts         INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ,
    last_error       TEXT,
    fired_at         TIMESTAMPTZ,
    cancelled_at     TIMESTAMPTZ,
    cancel_reason    TEXT,
    parked_at        TIMESTAMPTZ
);
-- The scheduler's query walks pending rows by due time; this index holds nothing else.
CREATE INDEX tidings_saga_deadlines_due ON tidings_saga_deadlines (due_at)
    WHERE fired_at IS NULL AND cancelled_at IS NULL AND parked_at IS NULL;
-- Cancelling (explicitly, or all of them when the saga completes) looks up an instance's open rows.
CREATE INDEX tidings_saga_deadlines_saga ON tidings_saga_deadlines (saga_id)
    WHERE fired_at IS NULL AND cancelled_at IS NULL;
