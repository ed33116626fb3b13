"""Infrastructure of this context: anti-corruption layers, projections and wiring to tidings (filled in later)."""
