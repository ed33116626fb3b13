"""Ordering's application: place and accept orders; publish the contract when the order's market is routed here.

The routing row is read inside the command's transaction (``uow.execute``), so the outbox row and
the decision to publish commit together; under ``legacy`` the order is kept but nothing is
published (the new context shadows the monolith until its market is cut over).
"""

from __future__ import annotations

from examples.fulfilment.contracts import ORDER_ACCEPTED_TOPIC, OrderAcceptedForFulfillment
from examples.fulfilment.cutover import ROUTING_TABLE, publishes
from examples.fulfilment.ordering.domain import AcceptOrder, Order, OrderAccepted, PlaceOrder
from tidings.app import Application, UnitOfWork
from tidings.store import Store

__all__ = ["CONTEXT", "ordering_application"]

CONTEXT = "ordering"


def ordering_application(store: Store) -> Application:
    """The Ordering application on ``store`` (which also holds the routing table)."""
    app = Application(store, name=CONTEXT)

    @app.command_handler(PlaceOrder)
    def place(command: PlaceOrder, uow: UnitOfWork) -> Order:
        return Order.place(command)

    @app.command_handler(AcceptOrder)
    async def accept(command: AcceptOrder, uow: UnitOfWork) -> None:
        order = await uow.get(Order, command.order_id)
        order.accept(command.accepted_at)

    @app.on(OrderAccepted)
    async def publish_when_routed_here(event: OrderAccepted, uow: UnitOfWork) -> None:
        order = await uow.get(Order, uow.cause.aggregate_id if uow.cause and uow.cause.aggregate_id else "")
        rows = await uow.execute(f"SELECT producer FROM {ROUTING_TABLE} WHERE market = ?", (order.market,))
        if not publishes(rows[0][0] if rows else None, "ordering"):
            return
        uow.publish(
            OrderAcceptedForFulfillment(
                order_id=order.id, channel=order.channel, market=order.market, total_cents=order.total_cents,
                currency=order.currency, accepted_at=event.accepted_at, sku=order.sku, quantity=order.quantity,
            ),
            topic=ORDER_ACCEPTED_TOPIC,
            key=order.id,
        )  # fmt: skip

    return app
