-- Kept in step with PostgreSQL, where a relay marks itself waiting so that commits notify only then.
-- SQLite wakes its one relay in-process and never reads this column.
ALTER TABLE tidings_relays ADD COLUMN waiting INTEGER NOT NULL DEFAULT 0;
