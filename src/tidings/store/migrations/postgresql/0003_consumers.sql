-- Messages a consumer could not apply ("dead") and the later messages of their key parked behind
-- them ("held"), kept whole for inspection and replay. Rows are never deleted by tidings: a replayed
-- or purged row stays as the record of what happened to the message.
CREATE TABLE tidings_dead_letters (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer        TEXT        NOT NULL,
    topic           TEXT        NOT NULL,
    partition_key   TEXT        NOT NULL,
    partition       INTEGER     NOT NULL,
    event_id        TEXT        NOT NULL,
    event_type      TEXT,
    schema_version  INTEGER,
    -- The headers as received (the envelope travels in tidings-* headers), and the envelope as JSON
    -- when they formed one.
    headers         TEXT        NOT NULL,
    envelope        TEXT,
    -- The bytes as received: they need not be JSON, or even UTF-8.
    payload         BYTEA       NOT NULL,
    reason          TEXT        NOT NULL,
    error           TEXT        NOT NULL,
    traceback       TEXT        NOT NULL DEFAULT '',
    attempts        INTEGER     NOT NULL,
    status          TEXT        NOT NULL
        CHECK (status IN ('dead', 'held', 'replay_requested', 'replayed', 'purged')),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX tidings_dead_letters_listing ON tidings_dead_letters (consumer, status, id);
-- The rows that hold their key back; few by nature, looked up by consumer and key.
CREATE INDEX tidings_dead_letters_blocking ON tidings_dead_letters (consumer, partition_key, id)
    WHERE status IN ('dead', 'held', 'replay_requested');

-- Inbox rows are pruned oldest first, in bounded batches, per consumer.
CREATE INDEX tidings_inbox_processed ON tidings_inbox (consumer, processed_at);

-- Processes of one consumer announce themselves and the shards they read, to share them fairly.
CREATE TABLE tidings_consumer_members (
    consumer      TEXT        NOT NULL,
    member_id     TEXT        NOT NULL,
    host          TEXT        NOT NULL,
    pid           INTEGER     NOT NULL,
    -- The backend of the member's lock connection: while it exists in pg_stat_activity the member lives.
    backend_pid   INTEGER     NOT NULL DEFAULT 0,
    started_at    TIMESTAMPTZ NOT NULL,
    heartbeat_at  TIMESTAMPTZ NOT NULL,
    shards        TEXT        NOT NULL DEFAULT '',
    PRIMARY KEY (consumer, member_id)
);

-- Wakes the running consumer when an operator asks for a replay or a purge (whoever updates the row).
CREATE FUNCTION tidings_dead_letters_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tidings_dead_letters', NEW.consumer);
    RETURN NULL;
END $$;
CREATE TRIGGER tidings_dead_letters_notify AFTER UPDATE OF status ON tidings_dead_letters
    FOR EACH ROW WHEN (NEW.status IN ('replay_requested', 'purged'))
    EXECUTE FUNCTION tidings_dead_letters_notify();
