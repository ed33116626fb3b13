"""Sagas for the saga tests, importable by a scheduler process (``--app saga_model:SAGAS``).

- ``AssetProcessing`` follows an uploaded asset (PLATFORM.md): awaiting metadata → awaiting index
  → complete, then publishes ``AssetReadyForSearch``; a deadline raises ``AssetProcessingStalled``.
  The ``assets`` application executes its commands, so a test can run the whole loop.
- ``OrderFulfilment`` reserves stock, charges payment and ships; each forward step declares its
  compensation next to it, and a failure (payment, shipment, or an overdue payment) undoes the
  steps done so far, newest first.
- ``Tally`` only counts, for the race tests.
"""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar

from tidings import Application, Command, DomainError, DomainEvent, IntegrationEvent, StateStoredAggregate, applies
from tidings.app import UnitOfWork
from tidings.messaging import Envelope
from tidings.runtime.sagas import Saga, compensates, on, starts
from tidings.store import Store

# -- asset processing: contracts ------------------------------------------------------------------


class AssetUploaded(IntegrationEvent, name="assets.AssetUploaded"):
    asset_id: str
    title: str


class MetadataExtracted(IntegrationEvent, name="assets.MetadataExtracted"):
    asset_id: str
    width: int
    height: int
    format: str


class AssetIndexed(IntegrationEvent, name="assets.AssetIndexed"):
    asset_id: str


class AssetReadyForSearch(IntegrationEvent, name="assets.AssetReadyForSearch", version=1):
    asset_id: str
    title: str
    width: int
    height: int
    format: str


class AssetProcessingStalled(IntegrationEvent, name="assets.AssetProcessingStalled"):
    asset_id: str
    status: str


class ProcessingOverdue(DomainEvent, name="assets.ProcessingOverdue"):
    """The deadline message: the asset was not ready in time."""

    asset_id: str


class ExtractMetadata(Command):
    asset_id: str


class IndexAsset(Command):
    asset_id: str


class UploadAsset(Command):
    asset_id: str
    title: str


# -- asset processing: the saga -------------------------------------------------------------------


def by_asset(message: AssetUploaded | MetadataExtracted | AssetIndexed) -> str:
    return message.asset_id


class AssetProcessing(Saga, context="assets"):
    """Follows one asset from upload to searchable."""

    #: How long an asset may take before it counts as stalled (tests make it short).
    stall_after: ClassVar[timedelta] = timedelta(minutes=30)

    status: str = "awaiting metadata"
    title: str = ""
    width: int = 0
    height: int = 0
    format: str = ""

    @starts(AssetUploaded, key=by_asset)
    def uploaded(self, event: AssetUploaded) -> ExtractMetadata:
        self.title = event.title
        self.schedule(self.stall_after, ProcessingOverdue(asset_id=event.asset_id))
        return ExtractMetadata(asset_id=event.asset_id)

    @on(MetadataExtracted, key=by_asset)
    def metadata_extracted(self, event: MetadataExtracted) -> IndexAsset:
        self.status = "awaiting index"
        self.width, self.height, self.format = event.width, event.height, event.format
        return IndexAsset(asset_id=event.asset_id)

    @on(AssetIndexed, key=by_asset)
    def indexed(self, event: AssetIndexed) -> AssetReadyForSearch:
        self.status = "complete"
        self.complete()
        return AssetReadyForSearch(
            asset_id=self.key, title=self.title, width=self.width, height=self.height, format=self.format
        )

    @on(ProcessingOverdue)
    def overdue(self, deadline: ProcessingOverdue) -> AssetProcessingStalled:
        # Stalled is news, not the end: the asset may still finish, and then it is announced as ready.
        stalled_in = self.status
        self.status = "stalled"
        return AssetProcessingStalled(asset_id=self.key, status=stalled_in)


# -- the assets context that executes the saga's commands -----------------------------------------


class Uploaded(DomainEvent, name="assets.domain.Uploaded"):
    title: str


class Extracted(DomainEvent, name="assets.domain.Extracted"):
    width: int
    height: int
    format: str


class Indexed(DomainEvent, name="assets.domain.Indexed"):
    pass


class Asset(StateStoredAggregate):
    """An uploaded media asset; metadata only after upload, indexing only after metadata."""

    title: str = ""
    width: int = 0
    indexed: bool = False

    def extract(self) -> None:
        if self.width:
            raise DomainError(f"Asset {self.id} already has metadata")
        # A stand-in extractor: every asset is a 1600x900 jpeg.
        self.record(Extracted(width=1600, height=900, format="jpeg"))

    def index(self) -> None:
        if not self.width:
            raise DomainError(f"Asset {self.id} has no metadata yet; it cannot be indexed")
        self.record(Indexed())

    @applies
    def _uploaded(self, event: Uploaded) -> None:
        self.title = event.title

    @applies
    def _extracted(self, event: Extracted) -> None:
        self.width = event.width

    @applies
    def _indexed(self, event: Indexed) -> None:
        self.indexed = True


def make_assets_app(store: Store) -> Application:
    """The assets context: executes UploadAsset, ExtractMetadata and IndexAsset, publishes the contracts."""
    app = Application(store, name="assets")

    @app.command_handler(UploadAsset)
    def upload(command: UploadAsset, uow: UnitOfWork) -> Asset:
        asset = Asset(command.asset_id)
        asset.record(Uploaded(title=command.title))
        return asset

    @app.command_handler(ExtractMetadata)
    async def extract(command: ExtractMetadata, uow: UnitOfWork) -> None:
        (await uow.get(Asset, command.asset_id)).extract()

    @app.command_handler(IndexAsset)
    async def index(command: IndexAsset, uow: UnitOfWork) -> None:
        (await uow.get(Asset, command.asset_id)).index()

    @app.translator(Uploaded)
    def uploaded(event: Uploaded, envelope: Envelope) -> AssetUploaded:
        return AssetUploaded(asset_id=envelope.aggregate_id or "", title=event.title)

    @app.translator(Extracted)
    def extracted(event: Extracted, envelope: Envelope) -> MetadataExtracted:
        return MetadataExtracted(asset_id=envelope.aggregate_id or "", width=event.width, height=event.height, format=event.format)

    @app.translator(Indexed)
    def indexed(event: Indexed, envelope: Envelope) -> AssetIndexed:
        return AssetIndexed(asset_id=envelope.aggregate_id or "")

    return app


# -- order fulfilment: forward steps with compensations -------------------------------------------


class OrderPlaced(IntegrationEvent, name="orders.OrderPlaced"):
    order_id: str
    sku: str
    quantity: int
    amount_cents: int


class StockReserved(IntegrationEvent, name="inventory.StockReserved"):
    order_id: str
    reservation_id: str


class PaymentCaptured(IntegrationEvent, name="payments.PaymentCaptured"):
    order_id: str
    payment_id: str


class PaymentFailed(IntegrationEvent, name="payments.PaymentFailed"):
    order_id: str
    why: str


class OrderShipped(IntegrationEvent, name="shipping.OrderShipped"):
    order_id: str


class ShipmentFailed(IntegrationEvent, name="shipping.ShipmentFailed"):
    order_id: str
    why: str


class PaymentOverdue(DomainEvent, name="orders.PaymentOverdue"):
    order_id: str


class ReserveStock(Command):
    order_id: str
    sku: str
    quantity: int


class ReleaseStock(Command):
    reservation_id: str


class ChargePayment(Command):
    order_id: str
    amount_cents: int


class RefundPayment(Command):
    payment_id: str
    amount_cents: int


class ShipOrder(Command):
    order_id: str


class OrderFulfilled(IntegrationEvent, name="orders.OrderFulfilled"):
    order_id: str


class OrderRejected(IntegrationEvent, name="orders.OrderRejected"):
    order_id: str
    why: str


def by_order(message: OrderPlaced | StockReserved | PaymentCaptured | PaymentFailed | OrderShipped | ShipmentFailed) -> str:
    return message.order_id


class OrderFulfilment(Saga, context="orders"):
    """Reserve stock, charge payment, ship; undo what was done if a later step fails."""

    payment_timeout: ClassVar[timedelta] = timedelta(minutes=15)

    sku: str = ""
    quantity: int = 0
    amount_cents: int = 0
    reservation_id: str | None = None
    payment_id: str | None = None
    status: str = "reserving stock"

    @starts(OrderPlaced, key=by_order)
    def placed(self, event: OrderPlaced) -> None:
        self.sku, self.quantity, self.amount_cents = event.sku, event.quantity, event.amount_cents
        # Sent, not returned: it goes to another context's command topic.
        self.send(ReserveStock(order_id=self.key, sku=event.sku, quantity=event.quantity), context="inventory")

    @on(StockReserved, key=by_order)
    def stock_reserved(self, event: StockReserved) -> None:
        self.reservation_id = event.reservation_id
        self.status = "charging payment"
        self.schedule(self.payment_timeout, PaymentOverdue(order_id=self.key))
        self.send(ChargePayment(order_id=self.key, amount_cents=self.amount_cents), context="payments")

    @compensates(stock_reserved)
    def release_stock(self) -> None:
        assert self.reservation_id is not None
        self.send(ReleaseStock(reservation_id=self.reservation_id), context="inventory")

    @on(PaymentCaptured, key=by_order)
    def payment_captured(self, event: PaymentCaptured) -> None:
        self.payment_id = event.payment_id
        self.status = "shipping"
        self.cancel(PaymentOverdue)
        self.send(ShipOrder(order_id=self.key), context="shipping")

    @compensates(payment_captured)
    def refund_payment(self) -> None:
        assert self.payment_id is not None
        self.send(RefundPayment(payment_id=self.payment_id, amount_cents=self.amount_cents), context="payments")

    @on(OrderShipped, key=by_order)
    def shipped(self, event: OrderShipped) -> OrderFulfilled:
        self.status = "fulfilled"
        self.complete()
        return OrderFulfilled(order_id=self.key)

    @on(PaymentFailed, key=by_order, compensate=True)
    def payment_failed(self, event: PaymentFailed) -> OrderRejected:
        self.status = "rejected"
        return OrderRejected(order_id=self.key, why=f"payment failed: {event.why}")

    @on(ShipmentFailed, key=by_order)
    def shipment_failed(self, event: ShipmentFailed) -> OrderRejected:
        self.status = "rejected"
        self.compensate(f"shipment failed: {event.why}")
        return OrderRejected(order_id=self.key, why=f"shipment failed: {event.why}")

    @on(PaymentOverdue)
    def payment_overdue(self, deadline: PaymentOverdue) -> OrderRejected:
        self.status = "rejected"
        self.compensate("payment overdue")
        return OrderRejected(order_id=self.key, why="payment overdue")


# -- a counter for races --------------------------------------------------------------------------


class Counted(IntegrationEvent, name="tally.Counted"):
    tally_id: str
    n: int


class Tally(Saga, context="tally"):
    """Adds up numbers; a lost update would show as a missing number."""

    total: int = 0
    seen: list[int] = []

    @starts(Counted, key=lambda e: e.tally_id)
    def counted(self, event: Counted) -> None:
        self.total += event.n
        self.seen.append(event.n)


class RefundRequested(IntegrationEvent, name="refunds.RefundRequested"):
    order_id: str
    channel: str


class RefundIssued(IntegrationEvent, name="refunds.RefundIssued"):
    order_id: str
    channel: str


class OneRefund(Saga, context="refunds"):
    """Refunds an order at most once: it starts and finishes in one turn (a race would refund twice)."""

    @starts(RefundRequested, key=lambda e: e.order_id)
    def requested(self, event: RefundRequested) -> RefundIssued:
        self.complete()
        return RefundIssued(order_id=self.key, channel=event.channel)


SAGAS = [AssetProcessing, OrderFulfilment, Tally]
