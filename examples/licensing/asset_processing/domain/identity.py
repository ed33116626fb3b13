"""The deterministic identity of an asset: the same file uploaded twice by one owner gets the same id."""

from __future__ import annotations

import uuid

__all__ = ["ASSET_NAMESPACE", "asset_id_for"]

#: Namespace of asset ids (a fixed, random UUID: changing it would give every asset a new id).
ASSET_NAMESPACE = uuid.UUID("5b0f3c7e-2d54-4c4e-9a43-1f6f2f1f8a10")


def asset_id_for(owner_id: str, checksum: str) -> str:
    """The id of the asset ``owner_id`` uploads with content ``checksum`` (a UUIDv5 string)."""
    # Derived, not random, so a duplicate upload targets the aggregate that already exists: the
    # aggregate refuses it when loaded, and two racing uploads collide on version 0 in the store
    # (ConcurrencyError) instead of creating two assets for one file. The owner's length prefix
    # keeps ("a", "b:c") and ("a:b", "c") apart; the checksum is lowercased because hex is
    # case-insensitive and "AB…" must not be a second spelling of one file.
    return str(uuid.uuid5(ASSET_NAMESPACE, f"{len(owner_id)}:{owner_id}:{checksum.lower()}"))
