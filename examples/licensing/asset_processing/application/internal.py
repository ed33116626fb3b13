"""Internal messages of Asset Processing: its own domain events on their way to its own workers and saga.

They are integration events in form (flat, versioned, sent through the outbox) but private in
meaning: only this context subscribes to ``asset_processing.internal``, so they may change with the
context's code, unlike the contracts in ``examples/licensing/contracts``. Each carries the asset id
(the aggregate id) so workers and the saga need no look-up, and travels partitioned by it, so the
three facts of one asset arrive in the order they were committed.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from tidings.messaging import IntegrationEvent, MessageRegistry

__all__ = [
    "INTERNAL_MESSAGES",
    "INTERNAL_TOPIC",
    "AssetIndexed",
    "AssetUploaded",
    "MetadataExtracted",
    "ProcessingOverdue",
    "internal_registry",
]

#: The topic of this context's internal messages (read by its extractor, indexer and saga only).
INTERNAL_TOPIC = "asset_processing.internal"


class AssetUploaded(IntegrationEvent, name="asset_processing.internal.AssetUploaded", version=1):
    """An asset was uploaded: what the metadata extractor needs to read it and the saga to follow it."""

    topic: ClassVar[str] = INTERNAL_TOPIC

    asset_id: str
    owner_id: str
    title: str
    media_type: str
    size_bytes: int
    checksum: str


class MetadataExtracted(IntegrationEvent, name="asset_processing.internal.MetadataExtracted", version=1):
    """An asset's metadata was extracted: the indexer's cue, and what the saga will tell search about it."""

    topic: ClassVar[str] = INTERNAL_TOPIC

    asset_id: str
    width: int
    height: int
    format: str
    camera_make: str | None = None
    camera_model: str | None = None
    captured_at: datetime | None = None


class AssetIndexed(IntegrationEvent, name="asset_processing.internal.AssetIndexed", version=1):
    """An asset was indexed under these keywords: the last step before it is ready for search."""

    topic: ClassVar[str] = INTERNAL_TOPIC

    asset_id: str
    keywords: tuple[str, ...] = ()


class ProcessingOverdue(IntegrationEvent, name="asset_processing.internal.ProcessingOverdue", version=1):
    """The AssetProcessing saga's own deadline: the asset was due to be ready ``after_seconds`` after upload."""

    # Never published: it is a deadline the saga schedules for itself and the scheduler delivers.
    asset_id: str
    after_seconds: float


#: Every internal message, so a consumer of the internal topic can read (and skip) the ones it does not handle.
INTERNAL_MESSAGES: tuple[type[IntegrationEvent], ...] = (AssetUploaded, MetadataExtracted, AssetIndexed, ProcessingOverdue)


def internal_registry() -> MessageRegistry:
    """A registry that reads every internal message (anything else on the topic is an unknown type)."""
    registry = MessageRegistry()
    registry.register(*INTERNAL_MESSAGES)
    return registry
