"""Domain events of Asset Processing: the facts of an asset's way from upload to the search index."""

from __future__ import annotations

from datetime import datetime

from tidings.domain import DomainEvent

__all__ = ["AssetUploaded", "MetadataExtracted", "AssetIndexed"]


class AssetUploaded(DomainEvent, name="asset_processing.AssetUploaded"):
    """An owner uploaded a media file; the asset now waits for its metadata."""

    owner_id: str
    title: str
    media_type: str
    size_bytes: int
    checksum: str


class MetadataExtracted(DomainEvent, name="asset_processing.MetadataExtracted"):
    """The extractor read the asset's dimensions, format and camera (EXIF-like) fields."""

    width: int
    height: int
    format: str
    camera_make: str | None = None
    camera_model: str | None = None
    lens_model: str | None = None
    iso: int | None = None
    focal_length_mm: float | None = None
    f_number: float | None = None
    exposure_time: str | None = None
    captured_at: datetime | None = None


class AssetIndexed(DomainEvent, name="asset_processing.AssetIndexed"):
    """The asset was added to the search index under these keywords."""

    keywords: tuple[str, ...] = ()
