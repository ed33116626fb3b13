-- Dead letters carry the business importance of their contract (critical, high, normal, low), so
-- an operator sees first what matters most (`tidings dlq list --importance critical`). NULL: the
-- message is no contract the consumer knows (a command, a domain event, an unknown type).
ALTER TABLE tidings_dead_letters ADD COLUMN importance TEXT;
