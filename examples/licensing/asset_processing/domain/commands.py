"""Commands of Asset Processing, each checking the values of its own fields."""

from __future__ import annotations

import re
from datetime import datetime

from examples.licensing.asset_processing.domain.identity import asset_id_for
from tidings.domain import Command, ValidationError

__all__ = [
    "MEDIA_TYPES",
    "FORMATS",
    "MAX_TITLE_LENGTH",
    "MAX_KEYWORDS",
    "MAX_SIZE_BYTES",
    "UploadAsset",
    "ExtractMetadata",
    "IndexAsset",
]

#: Media types the platform accepts for upload.
MEDIA_TYPES = frozenset(
    {"image/jpeg", "image/png", "image/tiff", "image/webp", "image/heic", "video/mp4", "video/quicktime"}
)
#: Container formats the metadata extractor may report.
FORMATS = frozenset({"jpeg", "png", "tiff", "webp", "heic", "mp4", "mov"})
MAX_TITLE_LENGTH = 200
MAX_KEYWORDS = 50
#: The largest file the platform takes (1 TiB): inside the 64-bit integers every store and read
#: model holds, where 2**63 bytes was accepted and then dead-lettered by the search index.
MAX_SIZE_BYTES = 2**40

# Lowercase only: the checksum is part of the asset's derived id, so "AB…" and "ab…" must not be
# two spellings of one file that slip past the duplicate check.
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _invalid(command: Command, field: str, reason: str) -> ValidationError:
    return ValidationError(reason, field=field, message_type=type(command).__name__)


def _require_text(command: Command, field: str, value: str) -> None:
    if not value.strip():
        raise _invalid(command, field, "must not be blank")


class UploadAsset(Command, name="asset_processing.UploadAsset"):
    """Upload a media file for ``owner_id``; the asset's id is derived from the owner and the checksum."""

    owner_id: str
    title: str
    media_type: str
    size_bytes: int
    checksum: str

    @property
    def asset_id(self) -> str:
        """The id this upload creates (the same for a duplicate of the same file by the same owner)."""
        return asset_id_for(self.owner_id, self.checksum)

    def validate(self) -> None:
        """Refuse a blank owner or title, an unknown media type, an empty file or a malformed checksum."""
        _require_text(self, "owner_id", self.owner_id)
        _require_text(self, "title", self.title)
        if len(self.title) > MAX_TITLE_LENGTH:
            raise _invalid(self, "title", f"must be at most {MAX_TITLE_LENGTH} characters, got {len(self.title)}")
        if self.media_type not in MEDIA_TYPES:
            choices = ", ".join(sorted(MEDIA_TYPES))
            raise _invalid(self, "media_type", f"must be one of {choices}; got {self.media_type!r}")
        if self.size_bytes <= 0:
            raise _invalid(self, "size_bytes", f"must be positive, got {self.size_bytes}")
        if self.size_bytes > MAX_SIZE_BYTES:
            raise _invalid(self, "size_bytes", f"must be at most {MAX_SIZE_BYTES} (1 TiB), got {self.size_bytes}")
        if not _SHA256_HEX.fullmatch(self.checksum):
            raise _invalid(self, "checksum", "must be a SHA-256 digest: 64 lowercase hexadecimal characters")


class ExtractMetadata(Command, name="asset_processing.ExtractMetadata"):
    """Attach what the extractor read from the file to an uploaded asset."""

    asset_id: str
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

    def validate(self) -> None:
        """Refuse non-positive dimensions or optics, an unknown format, or a capture time without a time zone."""
        _require_text(self, "asset_id", self.asset_id)
        for field, value in (("width", self.width), ("height", self.height)):
            if value < 1:
                raise _invalid(self, field, f"must be at least 1 pixel, got {value}")
        if self.format not in FORMATS:
            raise _invalid(self, "format", f"must be one of {', '.join(sorted(FORMATS))}; got {self.format!r}")
        if self.iso is not None and self.iso < 1:
            raise _invalid(self, "iso", f"must be at least 1 when given, got {self.iso}")
        for field, optic in (("focal_length_mm", self.focal_length_mm), ("f_number", self.f_number)):
            if optic is not None and not optic > 0:  # `not >` also refuses NaN
                raise _invalid(self, field, f"must be positive when given, got {optic}")
        if self.exposure_time is not None:
            _require_text(self, "exposure_time", self.exposure_time)
        # A naive time cannot be compared with the rest of the platform's UTC timestamps.
        if self.captured_at is not None and self.captured_at.utcoffset() is None:
            raise _invalid(self, "captured_at", "must include a time zone (e.g. 2024-05-01T10:00:00+00:00)")


class IndexAsset(Command, name="asset_processing.IndexAsset"):
    """Add an asset that has its metadata to the search index under some keywords."""

    asset_id: str
    keywords: tuple[str, ...] = ()

    def validate(self) -> None:
        """Refuse a blank asset id, blank keywords, or more keywords than the index takes."""
        _require_text(self, "asset_id", self.asset_id)
        if len(self.keywords) > MAX_KEYWORDS:
            raise _invalid(self, "keywords", f"must be at most {MAX_KEYWORDS}, got {len(self.keywords)}")
        for position, keyword in enumerate(self.keywords):
            _require_text(self, f"keywords[{position}]", keyword)
