"""The legacy order management system (the monolith's tables and writer) and the anti-corruption layer over its rows."""
