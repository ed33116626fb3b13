-- Replays that reach the broker again (docs/decisions/0015). A delivered row an operator replays
-- gets replays + 1, and the broker de-duplicates by (event id, replay) instead of by the event id
-- alone: a relay's retry of one publication is still stored once, a replay is stored again. The
-- envelope's event id never changes, so consumers that applied the event skip it in their inbox.
ALTER TABLE tidings_outbox ADD COLUMN replays INTEGER NOT NULL DEFAULT 0;

-- SQLite cannot drop a UNIQUE constraint: the local log is rebuilt with the new one, positions kept.
CREATE TABLE tidings_local_log_new (
    position      INTEGER PRIMARY KEY AUTOINCREMENT,
    topic         TEXT    NOT NULL,
    partition     INTEGER NOT NULL,
    key           TEXT    NOT NULL,
    event_id      TEXT    NOT NULL,
    replay        INTEGER NOT NULL DEFAULT 0,
    headers       TEXT    NOT NULL,
    payload       BLOB    NOT NULL,
    published_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    UNIQUE (event_id, replay)
);
INSERT INTO tidings_local_log_new (position, topic, partition, key, event_id, headers, payload, published_at)
    SELECT position, topic, partition, key, event_id, headers, payload, published_at FROM tidings_local_log;
DROP TABLE tidings_local_log;
ALTER TABLE tidings_local_log_new RENAME TO tidings_local_log;
CREATE INDEX tidings_local_log_topic ON tidings_local_log (topic, position);
