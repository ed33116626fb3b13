"""The deterministic identity of an investigation: one per license, however many infringements it collects."""

from __future__ import annotations

import uuid

__all__ = ["INVESTIGATION_NAMESPACE", "investigation_id_for"]

#: Namespace of investigation ids (a fixed, random UUID: changing it would give every investigation a new id).
INVESTIGATION_NAMESPACE = uuid.UUID("9d4a6b1c-3e2f-4a8b-b5c7-6e0f1d2a3b48")


def investigation_id_for(license_id: str) -> str:
    """The id of the investigation into ``license_id`` (a UUIDv5 string)."""
    # Derived so every infringement of one license, from Licensing or from the partner feed, lands
    # on the same case file instead of opening a new investigation per report.
    return str(uuid.uuid5(INVESTIGATION_NAMESPACE, license_id))
