"""Licensing's command handlers: each loads the aggregates one command needs and calls one domain method."""

from __future__ import annotations

from examples.licensing.licensing.domain import (
    LicensableAsset,
    License,
    OfferLicense,
    PurchaseLicense,
    RegisterLicensableAsset,
    ReportUsage,
)
from tidings.app import Application, UnitOfWork

__all__ = ["register_handlers"]


def register_handlers(app: Application) -> Application:
    """Teach ``app`` to handle RegisterLicensableAsset, OfferLicense, PurchaseLicense and ReportUsage."""

    @app.command_handler(RegisterLicensableAsset)
    async def register_licensable_asset(command: RegisterLicensableAsset, uow: UnitOfWork) -> LicensableAsset:
        asset = await uow.find(LicensableAsset, command.asset_id) or uow.add(LicensableAsset(command.asset_id))
        # A redelivered AssetReadyForSearch reaches an asset that is registered already: the
        # aggregate records nothing then, so nothing is written and the command is a no-op.
        asset.register(owner_id=command.owner_id, title=command.title, media_type=command.media_type)
        return asset

    @app.command_handler(OfferLicense)
    async def offer_license(command: OfferLicense, uow: UnitOfWork) -> License:
        # An asset Licensing never heard of is not searchable yet: a fresh, unregistered aggregate
        # (never saved, it records nothing) lets the domain refuse the offer with its own words.
        asset = await uow.find(LicensableAsset, command.asset_id) or LicensableAsset(command.asset_id)
        license = await uow.find(License, command.license_id) or uow.add(License(command.license_id))
        asset.offer_license(
            license,
            buyer_id=command.buyer_id,
            price_cents=command.price_cents,
            allowed_uses=command.allowed_uses,
            currency=command.currency,
        )
        return license

    @app.command_handler(PurchaseLicense)
    async def purchase_license(command: PurchaseLicense, uow: UnitOfWork) -> License:
        license = await uow.get(License, command.license_id)
        license.purchase(buyer_id=command.buyer_id)
        return license

    @app.command_handler(ReportUsage)
    async def report_usage(command: ReportUsage, uow: UnitOfWork) -> License:
        license = await uow.get(License, command.license_id)
        license.report_usage(uses=command.uses)
        return license

    return app
