"""Application layer of this context: command handlers, policies and translators (filled in later)."""
