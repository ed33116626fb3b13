"""Shipping's application, read model and consumer.

Exactly once per order, by event id AND by business key: the consumer's inbox drops a redelivered
message (same event id); a second *different* message about the same order — the legacy ACL and
the new Ordering context both publishing during a cut-over (``both``) — finds the order's shipment
already open and is recorded in ``shipping_duplicate_acceptances`` instead of opening another.
Both checks run in the message's transaction, and messages of one order arrive in order on one key.

The read model ``shipping_awaiting_release`` (order, market, sku, quantity, since) is written in the
same transaction as the shipment's events (a domain-bus handler), so it never disagrees with them.
"""

from __future__ import annotations

from examples.fulfilment.contracts import ORDER_ACCEPTED_TOPIC, TENANT, OrderAcceptedForFulfillment
from examples.fulfilment.shipping.domain import OpenShipment, ReleaseToWarehouse, Shipment, ShipmentOpened, ShipmentReleased
from tidings.app import Application, UnitOfWork
from tidings.messaging import MessageRegistry
from tidings.runtime import Consumer, HandlerContext, Retries
from tidings.runtime.backoff import Backoff
from tidings.store import Store

__all__ = ["AWAITING_RELEASE", "CONSUMER", "CONTEXT", "DUPLICATES", "ensure_tables", "shipping_application", "shipping_consumer"]

CONTEXT = "shipping"
CONSUMER = "shipping.order-acceptances"
AWAITING_RELEASE = "shipping_awaiting_release"
DUPLICATES = "shipping_duplicate_acceptances"

_DDL = (
    f"CREATE TABLE IF NOT EXISTS {AWAITING_RELEASE} (order_id TEXT PRIMARY KEY, market TEXT NOT NULL, sku TEXT NOT NULL, "
    "quantity INTEGER NOT NULL, since TEXT NOT NULL)",
    f"CREATE TABLE IF NOT EXISTS {DUPLICATES} (order_id TEXT NOT NULL, event_id TEXT NOT NULL PRIMARY KEY, "
    "first_event_id TEXT NOT NULL)",
)


async def ensure_tables(store: Store) -> None:
    """Create Shipping's read model and duplicate record if missing."""
    for statement in _DDL:
        await store.run(statement)


def shipping_application(store: Store) -> Application:
    """The Shipping application on ``store``."""
    app = Application(store, name=CONTEXT)

    @app.command_handler(OpenShipment)
    async def open_shipment(command: OpenShipment, uow: UnitOfWork) -> Shipment | None:
        existing = await uow.find(Shipment, command.order_id)
        if existing is not None:
            # The business key decides, not the event id: another producer's acceptance of the same order.
            await uow.execute(
                f"INSERT INTO {DUPLICATES} (order_id, event_id, first_event_id) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (command.order_id, command.accepted_event_id, existing.accepted_event_id),
            )
            return None
        return Shipment.open(command)

    @app.command_handler(ReleaseToWarehouse)
    async def release(command: ReleaseToWarehouse, uow: UnitOfWork) -> None:
        shipment = await uow.get(Shipment, command.order_id)
        shipment.release()

    @app.on(ShipmentOpened)
    async def awaiting(event: ShipmentOpened, uow: UnitOfWork) -> None:
        envelope = uow.cause
        await uow.execute(
            f"INSERT INTO {AWAITING_RELEASE} (order_id, market, sku, quantity, since) VALUES (?, ?, ?, ?, ?)",
            (envelope.aggregate_id if envelope else "", event.market, event.sku, event.quantity,
             envelope.occurred_at.isoformat() if envelope else ""),
        )  # fmt: skip

    @app.on(ShipmentReleased)
    async def released(event: ShipmentReleased, uow: UnitOfWork) -> None:
        await uow.execute(f"DELETE FROM {AWAITING_RELEASE} WHERE order_id = ?", (uow.cause.aggregate_id if uow.cause else "",))

    return app


def shipping_consumer(app: Application, store: Store | None = None) -> Consumer:
    """The consumer of the contract: each acceptance opens the order's shipment in the message's transaction."""
    registry = MessageRegistry()
    registry.register(OrderAcceptedForFulfillment)
    consumer = Consumer(
        CONSUMER,
        store,
        topics=[ORDER_ACCEPTED_TOPIC],
        registry=registry,
        tenant=TENANT,
        retries=Retries(immediate=1, delayed=2, backoff=Backoff(0.05, 1.0)),
    )

    @consumer.handler(OrderAcceptedForFulfillment)
    async def accepted(event: OrderAcceptedForFulfillment, ctx: HandlerContext) -> None:
        await ctx.handle(
            app,
            OpenShipment(order_id=event.order_id, market=event.market, sku=event.sku, quantity=event.quantity,
                         accepted_event_id=ctx.envelope.event_id),
            retries=2,
        )  # fmt: skip

    return consumer
