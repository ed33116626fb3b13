"""Infrastructure of Asset Processing: its workers (consumers), the SearchIndex read model, the HTTP API, the wiring."""
