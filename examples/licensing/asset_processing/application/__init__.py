"""Application layer of Asset Processing: command handlers, internal messages, indexing policy and the saga."""

from examples.licensing.asset_processing.application.handlers import build_application
from examples.licensing.asset_processing.application.indexing import keywords_for
from examples.licensing.asset_processing.application.internal import (
    INTERNAL_MESSAGES,
    INTERNAL_TOPIC,
    ProcessingOverdue,
    internal_registry,
)
from examples.licensing.asset_processing.application.saga import (
    AWAITING_INDEX,
    AWAITING_METADATA,
    COMPLETE,
    CONTEXT,
    STALLED,
    AssetProcessing,
    processing_saga,
)

__all__ = [
    "AWAITING_INDEX",
    "AWAITING_METADATA",
    "COMPLETE",
    "CONTEXT",
    "INTERNAL_MESSAGES",
    "INTERNAL_TOPIC",
    "STALLED",
    "AssetProcessing",
    "ProcessingOverdue",
    "build_application",
    "internal_registry",
    "keywords_for",
    "processing_saga",
]
