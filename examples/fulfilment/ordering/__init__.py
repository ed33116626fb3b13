"""The new Ordering context: orders as aggregates, the contract published through the outbox when the market is routed here."""
