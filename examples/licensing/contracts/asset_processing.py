"""Contracts published by Asset Processing: an asset became searchable, or its processing stalled."""

from __future__ import annotations

from datetime import datetime

from examples.licensing.contracts.topics import ASSET_PROCESSING_STALLED_TOPIC, ASSET_READY_FOR_SEARCH_TOPIC
from tidings.messaging import IntegrationEvent

__all__ = ["AssetReadyForSearch", "AssetProcessingStalled", "STALLED_STAGES"]

#: The saga stages an asset can stall in.
STALLED_STAGES = frozenset({"awaiting_metadata", "awaiting_index"})


class AssetReadyForSearch(
    IntegrationEvent, name="asset_processing.AssetReadyForSearch", version=1,
    topic=ASSET_READY_FOR_SEARCH_TOPIC, key="asset_id", importance="normal",
):
    """An uploaded asset has its metadata and is indexed: it can be found, shown and licensed."""

    asset_id: str
    owner_id: str
    title: str
    media_type: str
    size_bytes: int
    width: int
    height: int
    format: str
    camera_make: str | None = None
    camera_model: str | None = None
    captured_at: datetime | None = None
    keywords: tuple[str, ...] = ()


class AssetProcessingStalled(
    IntegrationEvent, name="asset_processing.AssetProcessingStalled", version=1,
    topic=ASSET_PROCESSING_STALLED_TOPIC, key="asset_id", importance="high",
):
    """An asset was not ready for search within the allowed time; ``stage`` says where it stopped."""

    asset_id: str
    owner_id: str
    stage: str
    waited_seconds: int
