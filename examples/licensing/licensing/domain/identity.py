"""The deterministic identity of a license: one license per asset and buyer."""

from __future__ import annotations

import uuid

__all__ = ["LICENSE_NAMESPACE", "license_id_for"]

#: Namespace of license ids (a fixed, random UUID: changing it would give every license a new id).
LICENSE_NAMESPACE = uuid.UUID("0c1e9a52-7b8d-4f0b-8f6e-3a2d9c4b5e71")


def license_id_for(asset_id: str, buyer_id: str) -> str:
    """The id of the license of ``asset_id`` for ``buyer_id`` (a UUIDv5 string)."""
    # Derived so that offering the same asset to the same buyer twice reaches the one license that
    # exists (refused there, or a ConcurrencyError on version 0 when two offers race). The asset's
    # length prefix keeps ("a", "b:c") and ("a:b", "c") apart: both ids are free-form strings.
    return str(uuid.uuid5(LICENSE_NAMESPACE, f"{len(asset_id)}:{asset_id}:{buyer_id}"))
