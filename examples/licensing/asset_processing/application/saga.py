"""The AssetProcessing saga: follows each upload to the search index, or says it stalled on the way."""

from __future__ import annotations

import math
from datetime import datetime
from typing import ClassVar

from examples.licensing.asset_processing.application.internal import (
    AssetIndexed,
    AssetUploaded,
    MetadataExtracted,
    ProcessingOverdue,
)
from examples.licensing.contracts import (
    ASSET_PROCESSING_STALLED_TOPIC,
    ASSET_READY_FOR_SEARCH_TOPIC,
    AssetProcessingStalled,
    AssetReadyForSearch,
)
from tidings.runtime import Saga, on, starts

__all__ = [
    "AWAITING_INDEX",
    "AWAITING_METADATA",
    "COMPLETE",
    "CONTEXT",
    "STALLED",
    "AssetProcessing",
    "processing_saga",
]

#: The bounded context the saga belongs to (its envelopes' source).
CONTEXT = "asset_processing"

# Stages, named as the contract's STALLED_STAGES names the ones an asset can stall in.
AWAITING_METADATA = "awaiting_metadata"
AWAITING_INDEX = "awaiting_index"
COMPLETE = "complete"
STALLED = "stalled"


class AssetProcessing(Saga, name="AssetProcessing", context=CONTEXT):
    """One asset's way: awaiting metadata → awaiting index → complete (AssetReadyForSearch), or stalled.

    It sends no commands: the extractor and the indexer react to the internal events themselves;
    the saga keeps what the search contract needs, announces the asset when both steps are done,
    and raises AssetProcessingStalled if they are not done ``stall_after`` seconds after upload.
    Completion waits for both facts whatever order they arrive in, so it never depends on the
    broker keeping the order of one asset's messages.
    """

    #: Seconds from upload to the stall deadline; :func:`processing_saga` makes a class with another value.
    stall_after: ClassVar[float] = 30.0

    stage: str = AWAITING_METADATA
    owner_id: str = ""
    title: str = ""
    media_type: str = ""
    size_bytes: int = 0
    uploaded_at: datetime | None = None
    has_metadata: bool = False
    width: int = 0
    height: int = 0
    format: str = ""
    camera_make: str | None = None
    camera_model: str | None = None
    captured_at: datetime | None = None
    indexed: bool = False
    keywords: tuple[str, ...] = ()

    @starts(AssetUploaded, key=lambda event: event.asset_id)
    def uploaded(self, event: AssetUploaded) -> None:
        """Remember the upload and set the stall deadline."""
        self.owner_id, self.title, self.media_type = event.owner_id, event.title, event.media_type
        self.size_bytes = event.size_bytes
        self.uploaded_at = self.cause.occurred_at if self.cause else None
        self.schedule(self.stall_after, ProcessingOverdue(asset_id=event.asset_id, after_seconds=self.stall_after))

    @on(MetadataExtracted, key=lambda event: event.asset_id)
    def metadata_extracted(self, event: MetadataExtracted) -> None:
        """Keep the metadata; the asset now waits for the indexer (unless it was indexed already)."""
        self.has_metadata = True
        self.width, self.height, self.format = event.width, event.height, event.format
        self.camera_make, self.camera_model, self.captured_at = event.camera_make, event.camera_model, event.captured_at
        self._ready_or_wait()

    @on(AssetIndexed, key=lambda event: event.asset_id)
    def asset_indexed(self, event: AssetIndexed) -> None:
        """Keep the keywords; with the metadata known, the asset is ready for search."""
        self.indexed = True
        self.keywords = tuple(event.keywords)
        self._ready_or_wait()

    @on(ProcessingOverdue)
    def overdue(self, deadline: ProcessingOverdue) -> None:
        """The asset is not ready in time: say where it stopped and end the saga as stalled."""
        stalled_in = self.stage
        self.stage = STALLED
        self.publish(
            AssetProcessingStalled(
                asset_id=self.key,
                owner_id=self.owner_id,
                stage=stalled_in,
                # Rounded up: a deadline under a second still waited, and "0 s" would read as none.
                waited_seconds=math.ceil(deadline.after_seconds),
            ),
            # The runner publishes on the message name unless told; the contract names its own topic.
            topic=ASSET_PROCESSING_STALLED_TOPIC,
        )
        self.compensate(f"not ready for search {deadline.after_seconds:g} s after upload; stalled {stalled_in}")

    def _ready_or_wait(self) -> None:
        if not self.has_metadata:
            self.stage = AWAITING_METADATA
            return
        if not self.indexed:
            self.stage = AWAITING_INDEX
            return
        self.stage = COMPLETE
        self.cancel(ProcessingOverdue)
        self.publish(
            AssetReadyForSearch(
                asset_id=self.key,
                owner_id=self.owner_id,
                title=self.title,
                media_type=self.media_type,
                size_bytes=self.size_bytes,
                width=self.width,
                height=self.height,
                format=self.format,
                camera_make=self.camera_make,
                camera_model=self.camera_model,
                captured_at=self.captured_at,
                keywords=self.keywords,
            ),
            topic=ASSET_READY_FOR_SEARCH_TOPIC,
        )
        self.complete()


def processing_saga(stall_after: float) -> type[AssetProcessing]:
    """The AssetProcessing saga with its stall deadline ``stall_after`` seconds after upload (same saga type)."""
    if not stall_after > 0:  # `not >` also refuses NaN
        raise ValueError(f"stall_after must be a positive number of seconds, got {stall_after!r}")
    if stall_after == AssetProcessing.stall_after:
        return AssetProcessing
    # A subclass rather than runner state: saga handlers are pure functions of state and message,
    # and the deadline's length is part of the saga's definition, so the test kit sees it too.
    return type("AssetProcessing", (AssetProcessing,), {"stall_after": float(stall_after), "__module__": __name__})
