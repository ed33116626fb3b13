"""Identifiers: UUIDv7 (time-ordered, so ids sort by creation and index well) as canonical strings."""

from __future__ import annotations

import uuid_utils

__all__ = ["new_id"]


def new_id() -> str:
    """A new UUIDv7 in its canonical 36-character text form."""
    return str(uuid_utils.uuid7())
