-- The digest of each applied message's payload (64 bits of BLAKE2b), so an event id that comes
-- again with different bytes is dead-lettered as a reused id instead of skipped as a redelivery.
-- Rows from before have none and are treated as before: any message with their id is a redelivery.
-- Numbered 0017 after its decision record, so it cannot collide with migrations written meanwhile.
ALTER TABLE tidings_inbox ADD COLUMN payload_digest BIGINT;
