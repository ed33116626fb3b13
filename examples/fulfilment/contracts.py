"""The published language between Ordering (legacy or new) and Shipping: one contract, whoever produces it.

The envelope carries ``event_id``, ``event_type``, ``schema_version``, ``occurred_at``, ``tenant`` and
``correlation_id`` (always ``order:<order id>``, so ``tidings trace order:X`` finds an order's whole
flow, whichever system published it); the payload carries the order and its business data.
"""

from __future__ import annotations

from tidings.messaging import IntegrationEvent

__all__ = ["ORDER_ACCEPTED_TOPIC", "TENANT", "OrderAcceptedForFulfillment", "order_correlation"]

#: The topic both producers publish the contract on; its partition key is the order id.
ORDER_ACCEPTED_TOPIC = "ordering.order-accepted-for-fulfillment"
#: The retailer's tenant, in every envelope of the contract.
TENANT = "acme-retail"


class OrderAcceptedForFulfillment(
    IntegrationEvent, name="ordering.OrderAcceptedForFulfillment", version=1,
    topic=ORDER_ACCEPTED_TOPIC, key="order_id", importance="critical",
):  # fmt: skip
    """An order was accepted and may be fulfilled: Shipping opens exactly one shipment for it."""

    order_id: str
    channel: str  # "web" | "store" | "phone"
    market: str  # ISO country code: "DE", "AT", …
    total_cents: int
    currency: str
    #: When the customer's order was accepted, in UTC (ISO 8601).
    accepted_at: str
    sku: str
    quantity: int


def order_correlation(order_id: str) -> str:
    """The correlation id of every message about one order (its business key)."""
    return f"order:{order_id}"
