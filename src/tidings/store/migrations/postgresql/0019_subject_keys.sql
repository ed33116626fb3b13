-- One data key per data subject, wrapped by the master key (TIDINGS_MASTER_KEY). Personal fields
-- are sealed with it; deleting the row ("forgetting" the subject) leaves their ciphertext unreadable.
-- The subject's id is never stored: rows are found by an HMAC of it under the master key.
CREATE TABLE tidings_subject_keys (
    key_id          TEXT        PRIMARY KEY,
    subject_digest  TEXT        NOT NULL UNIQUE,
    master_key_id   TEXT        NOT NULL,
    wrapped_key     BYTEA       NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
