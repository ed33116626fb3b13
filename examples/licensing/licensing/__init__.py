"""Licensing: searchable assets are offered to buyers, purchased once, and their usage is counted."""
