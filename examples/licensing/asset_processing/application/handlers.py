"""Asset Processing's write side: the command handlers, and translators that tell its own workers what happened."""

from __future__ import annotations

from examples.licensing.asset_processing.application import internal
from examples.licensing.asset_processing.application.saga import CONTEXT
from examples.licensing.asset_processing.domain import (
    Asset,
    AssetIndexed,
    AssetUploaded,
    ExtractMetadata,
    IndexAsset,
    MetadataExtracted,
    UploadAsset,
)
from tidings.app import Application, UnitOfWork
from tidings.messaging import Envelope
from tidings.store import Store

__all__ = ["build_application"]


def build_application(store: Store) -> Application:
    """The Asset Processing application on ``store``: UploadAsset, ExtractMetadata, IndexAsset and their translators."""
    app = Application(store, name=CONTEXT)

    @app.command_handler(UploadAsset)
    async def upload(command: UploadAsset, uow: UnitOfWork) -> str:
        # The id is derived from owner and checksum, so a duplicate finds the asset that exists and
        # the aggregate refuses it (DomainError); two racing first uploads collide on version 0
        # in the store (ConcurrencyError). Either way one file by one owner is one asset.
        asset = await uow.find(Asset, command.asset_id) or uow.add(Asset(command.asset_id))
        asset.upload(
            owner_id=command.owner_id,
            title=command.title,
            media_type=command.media_type,
            size_bytes=command.size_bytes,
            checksum=command.checksum,
        )
        return asset.id

    @app.command_handler(ExtractMetadata)
    async def extract(command: ExtractMetadata, uow: UnitOfWork) -> None:
        asset = await uow.get(Asset, command.asset_id)
        asset.extract_metadata(
            width=command.width,
            height=command.height,
            format=command.format,
            camera_make=command.camera_make,
            camera_model=command.camera_model,
            lens_model=command.lens_model,
            iso=command.iso,
            focal_length_mm=command.focal_length_mm,
            f_number=command.f_number,
            exposure_time=command.exposure_time,
            captured_at=command.captured_at,
        )

    @app.command_handler(IndexAsset)
    async def index(command: IndexAsset, uow: UnitOfWork) -> None:
        asset = await uow.get(Asset, command.asset_id)
        asset.index(keywords=command.keywords)

    # Translators, not bus handlers: each internal message is the domain event plus the asset id,
    # so it needs no reads. Published through the outbox in the command's transaction, keyed by
    # the aggregate id (the unit of work's default), so one asset's facts stay in order.

    @app.translator(AssetUploaded, topic=internal.INTERNAL_TOPIC)
    def uploaded(event: AssetUploaded, envelope: Envelope) -> internal.AssetUploaded:
        return internal.AssetUploaded(
            asset_id=_asset_id(envelope),
            owner_id=event.owner_id,
            title=event.title,
            media_type=event.media_type,
            size_bytes=event.size_bytes,
            checksum=event.checksum,
        )

    @app.translator(MetadataExtracted, topic=internal.INTERNAL_TOPIC)
    def described(event: MetadataExtracted, envelope: Envelope) -> internal.MetadataExtracted:
        return internal.MetadataExtracted(
            asset_id=_asset_id(envelope),
            width=event.width,
            height=event.height,
            format=event.format,
            camera_make=event.camera_make,
            camera_model=event.camera_model,
            captured_at=event.captured_at,
        )

    @app.translator(AssetIndexed, topic=internal.INTERNAL_TOPIC)
    def indexed(event: AssetIndexed, envelope: Envelope) -> internal.AssetIndexed:
        return internal.AssetIndexed(asset_id=_asset_id(envelope), keywords=tuple(event.keywords))

    return app


def _asset_id(envelope: Envelope) -> str:
    if not envelope.aggregate_id:
        # Every domain event is recorded by an aggregate; an envelope without one is a toolkit bug.
        raise ValueError(f"{envelope.event_type} {envelope.event_id} carries no aggregate id; cannot name its asset")
    return envelope.aggregate_id
