-- Rows that hold their key back: parked, or failed and waiting for a retry. Few by nature; the
-- relay's claim looks here for an earlier held row of each candidate's key.
CREATE INDEX tidings_outbox_held ON tidings_outbox (partition_key, id)
    WHERE delivered_at IS NULL AND (parked_at IS NOT NULL OR next_attempt_at IS NOT NULL);
-- The claim's ORDER BY id LIMIT n walks this and stops after n rows. Without it, PostgreSQL with
-- 2M delivered rows and a 50k backlog chose the primary key and took 1.4 s per claim (0.7 ms with it).
CREATE INDEX tidings_outbox_pending_id ON tidings_outbox (id) WHERE delivered_at IS NULL AND parked_at IS NULL;
-- Pruning deletes delivered rows oldest first, in bounded batches.
CREATE INDEX tidings_outbox_delivered ON tidings_outbox (delivered_at) WHERE delivered_at IS NOT NULL;

-- Relays announce themselves and the partitions they own, so the others can share fairly.
CREATE TABLE tidings_relays (
    relay_id      TEXT        PRIMARY KEY,
    host          TEXT        NOT NULL,
    pid           INTEGER     NOT NULL,
    -- The backend of the relay's lock connection: while it exists in pg_stat_activity the relay lives.
    backend_pid   INTEGER     NOT NULL DEFAULT 0,
    started_at    TIMESTAMPTZ NOT NULL,
    heartbeat_at  TIMESTAMPTZ NOT NULL,
    partitions    TEXT        NOT NULL DEFAULT ''
);

-- The local broker: a durable log in the store, read by consumer groups from their offsets.
CREATE TABLE tidings_local_log (
    position      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic         TEXT        NOT NULL,
    partition     INTEGER     NOT NULL,
    key           TEXT        NOT NULL,
    event_id      TEXT        NOT NULL UNIQUE,
    headers       TEXT        NOT NULL,
    payload       BYTEA       NOT NULL,
    published_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX tidings_local_log_topic ON tidings_local_log (topic, position);

CREATE TABLE tidings_local_offsets (
    group_name  TEXT   NOT NULL,
    topic       TEXT   NOT NULL,
    position    BIGINT NOT NULL,
    PRIMARY KEY (group_name, topic)
);

-- Wakes relays (LISTEN tidings_outbox) when a transaction commits outbox rows: once per statement,
-- delivered at commit and never for a rollback, whoever wrote the rows (tidings or plain SQL).
CREATE FUNCTION tidings_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tidings_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER tidings_outbox_notify AFTER INSERT ON tidings_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION tidings_outbox_notify();
