"""The quickstart's application layer: command handlers and the translators to public contracts."""

from __future__ import annotations

from examples.quickstart.domain import (
    License,
    LicensePurchased,
    OfferLicense,
    PurchaseLicense,
    ReportUsage,
    UsageExceededLicense,
)
from tidings.app import Application, UnitOfWork
from tidings.messaging import Envelope, IntegrationEvent
from tidings.store import Store


class LicensePurchaseConfirmed(IntegrationEvent, name="licensing.LicensePurchaseConfirmed", version=1):
    """Public contract: a license was bought."""

    license_id: str
    buyer_id: str
    price_cents: int


class UsageViolationDetected(IntegrationEvent, name="licensing.UsageViolationDetected", version=1):
    """Public contract: a buyer used an asset more than the license allows."""

    license_id: str
    used: int
    allowed: int


def build(store: Store) -> Application:
    """The licensing application wired to ``store``."""
    app = Application(store, name="licensing")

    @app.command_handler(OfferLicense)
    def offer(command: OfferLicense, uow: UnitOfWork) -> License:
        return License.offer(command.license_id, command.asset_id, command.price_cents, command.allowed_uses)

    @app.command_handler(PurchaseLicense)
    async def purchase(command: PurchaseLicense, uow: UnitOfWork) -> None:
        license = await uow.get(License, command.license_id)
        license.purchase(command.buyer_id)

    @app.command_handler(ReportUsage)
    async def report(command: ReportUsage, uow: UnitOfWork) -> None:
        license = await uow.get(License, command.license_id)
        license.report_usage(command.uses)

    @app.on(LicensePurchased)
    async def confirm_purchase(event: LicensePurchased, uow: UnitOfWork) -> None:
        # A bus handler, not a translator, because the contract carries the price from the aggregate.
        license = await uow.get(License, uow.cause.aggregate_id if uow.cause else "")
        uow.publish(LicensePurchaseConfirmed(license_id=license.id, buyer_id=event.buyer_id, price_cents=license.price_cents))

    @app.translator(UsageExceededLicense)
    def violation(event: UsageExceededLicense, envelope: Envelope) -> UsageViolationDetected:
        return UsageViolationDetected(license_id=envelope.aggregate_id or "", used=event.used, allowed=event.allowed)

    return app
