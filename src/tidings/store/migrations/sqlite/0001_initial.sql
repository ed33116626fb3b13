-- The journal: every domain event, in commit order (position), unique per stream version.
CREATE TABLE tidings_journal (
    position        INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id       TEXT    NOT NULL,
    stream_version  INTEGER NOT NULL,
    event_id        TEXT    NOT NULL UNIQUE,
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    occurred_at     TEXT    NOT NULL,
    correlation_id  TEXT    NOT NULL,
    envelope        TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    UNIQUE (stream_id, stream_version)
);
CREATE INDEX tidings_journal_correlation ON tidings_journal (correlation_id);

CREATE TABLE tidings_aggregate_state (
    aggregate_type  TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    state           TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    PRIMARY KEY (aggregate_type, aggregate_id)
) WITHOUT ROWID;

CREATE TABLE tidings_snapshots (
    stream_id   TEXT    PRIMARY KEY,
    version     INTEGER NOT NULL,
    state       TEXT    NOT NULL,
    created_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
) WITHOUT ROWID;

CREATE TABLE tidings_outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id         TEXT    NOT NULL UNIQUE,
    partition        INTEGER NOT NULL,
    partition_key    TEXT    NOT NULL,
    topic            TEXT    NOT NULL,
    event_type       TEXT    NOT NULL,
    envelope         TEXT    NOT NULL,
    payload          TEXT    NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT,
    last_error       TEXT,
    created_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    delivered_at     TEXT,
    parked_at        TEXT
);
-- The relay's claim reads only undelivered, unparked rows: this index stays small whatever the history.
CREATE INDEX tidings_outbox_pending ON tidings_outbox (partition, id)
    WHERE delivered_at IS NULL AND parked_at IS NULL;

CREATE TABLE tidings_inbox (
    consumer      TEXT NOT NULL,
    event_id      TEXT NOT NULL,
    processed_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    PRIMARY KEY (consumer, event_id)
) WITHOUT ROWID;

CREATE TABLE tidings_checkpoints (
    name        TEXT    PRIMARY KEY,
    position    INTEGER NOT NULL,
    updated_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
) WITHOUT ROWID;
