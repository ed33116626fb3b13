-- The journal: every domain event, unique per stream version. Positions come from a sequence, so
-- they are allocated in insert order, not commit order: readers that follow the journal must
-- tolerate gaps that fill in later (handled by the projection runner, not here).
CREATE TABLE tidings_journal (
    position        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id       TEXT        NOT NULL,
    stream_version  INTEGER     NOT NULL,
    event_id        UUID        NOT NULL UNIQUE,
    event_type      TEXT        NOT NULL,
    schema_version  INTEGER     NOT NULL,
    occurred_at     TIMESTAMPTZ NOT NULL,
    -- TEXT, not UUID: a caller's correlation id may come from elsewhere (an HTTP request id), as on SQLite.
    correlation_id  TEXT        NOT NULL,
    envelope        JSONB       NOT NULL,
    payload         JSONB       NOT NULL,
    CONSTRAINT tidings_journal_stream_version UNIQUE (stream_id, stream_version)
);
CREATE INDEX tidings_journal_correlation ON tidings_journal (correlation_id);

CREATE TABLE tidings_aggregate_state (
    aggregate_type  TEXT        NOT NULL,
    aggregate_id    TEXT        NOT NULL,
    version         INTEGER     NOT NULL,
    state           JSONB       NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id)
);

CREATE TABLE tidings_snapshots (
    stream_id   TEXT        PRIMARY KEY,
    version     INTEGER     NOT NULL,
    state       JSONB       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE tidings_outbox (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id         UUID        NOT NULL UNIQUE,
    partition        SMALLINT    NOT NULL,
    partition_key    TEXT        NOT NULL,
    topic            TEXT        NOT NULL,
    event_type       TEXT        NOT NULL,
    envelope         JSONB       NOT NULL,
    payload          JSONB       NOT NULL,
    attempts         INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ,
    last_error       TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at     TIMESTAMPTZ,
    parked_at        TIMESTAMPTZ
);
-- The relay's claim reads only undelivered, unparked rows: this index stays small whatever the history.
CREATE INDEX tidings_outbox_pending ON tidings_outbox (partition, id)
    WHERE delivered_at IS NULL AND parked_at IS NULL;

-- TEXT event ids: an inbox also records messages of foreign producers, whose ids need not be UUIDs.
CREATE TABLE tidings_inbox (
    consumer      TEXT        NOT NULL,
    event_id      TEXT        NOT NULL,
    processed_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

CREATE TABLE tidings_checkpoints (
    name        TEXT        PRIMARY KEY,
    position    BIGINT      NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
