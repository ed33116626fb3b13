"""The pure domain of Asset Processing: the Asset aggregate, its commands, events and identity."""

from examples.licensing.asset_processing.domain.asset import Asset
from examples.licensing.asset_processing.domain.commands import (
    FORMATS,
    MAX_KEYWORDS,
    MAX_TITLE_LENGTH,
    MEDIA_TYPES,
    ExtractMetadata,
    IndexAsset,
    UploadAsset,
)
from examples.licensing.asset_processing.domain.events import AssetIndexed, AssetUploaded, MetadataExtracted
from examples.licensing.asset_processing.domain.identity import ASSET_NAMESPACE, asset_id_for

__all__ = [
    "ASSET_NAMESPACE",
    "FORMATS",
    "MAX_KEYWORDS",
    "MAX_TITLE_LENGTH",
    "MEDIA_TYPES",
    "Asset",
    "AssetIndexed",
    "AssetUploaded",
    "ExtractMetadata",
    "IndexAsset",
    "MetadataExtracted",
    "UploadAsset",
    "asset_id_for",
]
