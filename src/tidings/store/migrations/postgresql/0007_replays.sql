-- Replays that reach the broker again (docs/decisions/0015). A delivered row an operator replays
-- gets replays + 1, and the broker de-duplicates by (event id, replay) instead of by the event id
-- alone: a relay's retry of one publication is still stored once, a replay is stored again. The
-- envelope's event id never changes, so consumers that applied the event skip it in their inbox.
ALTER TABLE tidings_outbox ADD COLUMN replays INTEGER NOT NULL DEFAULT 0;

ALTER TABLE tidings_local_log ADD COLUMN replay INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tidings_local_log DROP CONSTRAINT tidings_local_log_event_id_key;
ALTER TABLE tidings_local_log ADD CONSTRAINT tidings_local_log_publication UNIQUE (event_id, replay);
