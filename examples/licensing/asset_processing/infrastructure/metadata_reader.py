"""The stand-in for a real EXIF reader: metadata derived from the upload itself, the same every time.

The platform stores no files, so "reading" one means deriving plausible dimensions, format and
camera fields from the checksum (the file's identity) and the media type. Determinism matters: a
retried extraction must read what the first one read, or the aggregate would refuse the retry as
an attempt to replace its metadata. A title containing "corrupt" stands for a file no reader can
open, so the demo and the tests can watch retries end in a dead letter.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TypeVar

from examples.licensing.asset_processing.application.internal import AssetUploaded
from examples.licensing.asset_processing.domain import ExtractMetadata

__all__ = ["FORMAT_OF_MEDIA_TYPE", "UnreadableFile", "read_metadata"]

T = TypeVar("T")

#: The container format the reader reports for each accepted media type.
FORMAT_OF_MEDIA_TYPE = {
    "image/jpeg": "jpeg",
    "image/png": "png",
    "image/tiff": "tiff",
    "image/webp": "webp",
    "image/heic": "heic",
    "video/mp4": "mp4",
    "video/quicktime": "mov",
}

_CAMERAS = (
    ("Fujifilm", "X-T5", "XF 23mm F1.4 R LM WR"),
    ("Canon", "EOS R5", "RF 24-70mm F2.8 L IS USM"),
    ("Nikon", "Z 8", "NIKKOR Z 50mm f/1.8 S"),
    ("Sony", "ILCE-7RM5", "FE 35mm F1.4 GM"),
    ("Leica", "Q3", "Summilux 28 f/1.7 ASPH."),
)
_ISO = (100, 160, 200, 400, 800, 1600, 3200)
_FOCAL_LENGTHS = (23.0, 28.0, 35.0, 50.0, 85.0)
_F_NUMBERS = (1.4, 2.0, 2.8, 4.0, 5.6, 8.0, 11.0)
_EXPOSURES = ("1/30", "1/60", "1/125", "1/250", "1/500", "1/1000", "1/4000")
_VIDEO_SIZES = ((1920, 1080), (3840, 2160), (4096, 2160))
_EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
_FIVE_YEARS_IN_MINUTES = 5 * 365 * 24 * 60


class UnreadableFile(Exception):
    """The asset's file cannot be read (retryable in principle: storage may have been briefly unavailable)."""


def read_metadata(upload: AssetUploaded) -> ExtractMetadata:
    """The ExtractMetadata command for ``upload``, derived from its checksum and media type; UnreadableFile if corrupt."""
    if "corrupt" in upload.title.lower():
        raise UnreadableFile(
            f"asset {upload.asset_id} ({upload.title!r}, {upload.media_type}, checksum {upload.checksum[:12]}…): "
            "the file's header cannot be parsed; re-upload the file"
        )
    format = FORMAT_OF_MEDIA_TYPE.get(upload.media_type)
    if format is None:
        raise UnreadableFile(f"asset {upload.asset_id}: no reader for media type {upload.media_type!r}")
    digest = bytes.fromhex(upload.checksum)
    make, model, lens = _pick(_CAMERAS, digest[0])
    if upload.media_type.startswith("video/"):
        width, height = _pick(_VIDEO_SIZES, digest[1])
    else:
        # 12 to 60 megapixels in 3:2 or 4:3, landscape or portrait, as cameras write them.
        long_side = 4000 + (int.from_bytes(digest[1:3], "big") % 49) * 100
        short_side = long_side * 2 // 3 if digest[3] % 2 == 0 else long_side * 3 // 4
        width, height = (long_side, short_side) if digest[4] % 4 else (short_side, long_side)
    return ExtractMetadata(
        asset_id=upload.asset_id,
        width=width,
        height=height,
        format=format,
        camera_make=make,
        camera_model=model,
        lens_model=lens,
        iso=_pick(_ISO, digest[5]),
        focal_length_mm=_pick(_FOCAL_LENGTHS, digest[6]),
        f_number=_pick(_F_NUMBERS, digest[7]),
        exposure_time=_pick(_EXPOSURES, digest[8]),
        captured_at=_EPOCH + timedelta(minutes=int.from_bytes(digest[9:13], "big") % _FIVE_YEARS_IN_MINUTES),
    )


def _pick(choices: tuple[T, ...], byte: int) -> T:
    return choices[byte % len(choices)]
