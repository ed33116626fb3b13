"""The Asset aggregate: a media file uploaded once, then described by its metadata, then indexed."""

from __future__ import annotations

from datetime import datetime

from examples.licensing.asset_processing.domain.events import AssetIndexed, AssetUploaded, MetadataExtracted
from examples.licensing.asset_processing.domain.identity import asset_id_for
from tidings.domain import DomainError, EventSourcedAggregate, applies

__all__ = ["Asset"]


class Asset(EventSourcedAggregate, name="asset_processing.Asset"):
    """A media asset on its way from upload to search: upload → metadata → index, each step once.

    Event-sourced: its life is a short, append-only pipeline of three facts, and those facts are
    exactly what the AssetProcessing saga and the search index follow, so the stream is the useful
    record; replaying three events costs nothing, so it needs no snapshots either.
    """

    owner_id: str = ""
    title: str = ""
    media_type: str = ""
    size_bytes: int = 0
    checksum: str = ""
    metadata: MetadataExtracted | None = None
    keywords: tuple[str, ...] = ()
    indexed: bool = False

    @property
    def uploaded(self) -> bool:
        """Whether the asset has been uploaded (a fresh aggregate has not)."""
        return bool(self.checksum)

    def upload(self, *, owner_id: str, title: str, media_type: str, size_bytes: int, checksum: str) -> None:
        """Record the upload of this asset's file; the same file by the same owner is refused as a duplicate."""
        if self.uploaded:
            raise DomainError(
                f"Asset {self.id} was already uploaded by {self.owner_id} as {self.title!r} "
                f"(checksum {self.checksum[:12]}…); the same file by the same owner is a duplicate — use that asset"
            )
        expected = asset_id_for(owner_id, checksum)
        if self.id != expected:
            # A programming error, not a user's: with any other id a second upload of the same
            # file would land on a different aggregate and the duplicate check could not see it.
            raise ValueError(
                f"Asset {self.id} cannot hold the upload of {checksum[:12]}… by {owner_id}; "
                f"its id must be asset_id_for(owner_id, checksum) = {expected}"
            )
        self.record(
            AssetUploaded(
                owner_id=owner_id, title=title, media_type=media_type, size_bytes=size_bytes, checksum=checksum
            )
        )

    def extract_metadata(
        self,
        *,
        width: int,
        height: int,
        format: str,
        camera_make: str | None = None,
        camera_model: str | None = None,
        lens_model: str | None = None,
        iso: int | None = None,
        focal_length_mm: float | None = None,
        f_number: float | None = None,
        exposure_time: str | None = None,
        captured_at: datetime | None = None,
    ) -> None:
        """Record what the extractor read; only after upload, once (a retry with the same result changes nothing)."""
        if not self.uploaded:
            raise DomainError(f"Asset {self.id} is not uploaded yet; metadata can only be extracted after the upload")
        extracted = MetadataExtracted(
            width=width,
            height=height,
            format=format,
            camera_make=camera_make,
            camera_model=camera_model,
            lens_model=lens_model,
            iso=iso,
            focal_length_mm=focal_length_mm,
            f_number=f_number,
            exposure_time=exposure_time,
            captured_at=captured_at,
        )
        if self.metadata is not None:
            # The extractor runs at least once, so a retry that read the same values is expected and
            # harmless; different values would silently rewrite what the index and buyers already saw.
            if extracted == self.metadata:
                return
            raise DomainError(
                f"Asset {self.id} already has metadata ({self.metadata.width}x{self.metadata.height} "
                f"{self.metadata.format}); metadata is extracted once and cannot be replaced"
            )
        self.record(extracted)

    def index(self, *, keywords: tuple[str, ...] = ()) -> None:
        """Record that the asset is in the search index; only after its metadata, once (a retry changes nothing)."""
        if self.metadata is None:
            what = "is not uploaded yet" if not self.uploaded else "has no metadata yet"
            raise DomainError(f"Asset {self.id} {what}; it can only be indexed after its metadata was extracted")
        if self.indexed:
            if tuple(keywords) == self.keywords:
                return
            raise DomainError(
                f"Asset {self.id} is already indexed under {list(self.keywords)}; it is indexed once"
            )
        self.record(AssetIndexed(keywords=tuple(keywords)))

    @applies
    def _uploaded(self, event: AssetUploaded) -> None:
        self.owner_id = event.owner_id
        self.title = event.title
        self.media_type = event.media_type
        self.size_bytes = event.size_bytes
        self.checksum = event.checksum

    @applies
    def _metadata_extracted(self, event: MetadataExtracted) -> None:
        self.metadata = event

    @applies
    def _indexed(self, event: AssetIndexed) -> None:
        self.keywords = event.keywords
        self.indexed = True
