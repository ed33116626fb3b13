"""Ordering's domain: an order is placed, then accepted once; nothing here does I/O."""

from __future__ import annotations

from tidings.domain import Command, DomainError, DomainEvent, StateStoredAggregate, ValidationError, applies

__all__ = ["AcceptOrder", "Order", "OrderAccepted", "OrderPlaced", "PlaceOrder"]


class OrderPlaced(DomainEvent):
    """A customer placed an order."""

    market: str
    channel: str
    total_cents: int
    currency: str
    sku: str
    quantity: int


class OrderAccepted(DomainEvent):
    """The order passed its checks and may be fulfilled."""

    accepted_at: str


class PlaceOrder(Command):
    """Place an order (the storefront sends it to the new context beside the legacy OMS during the migration)."""

    order_id: str
    market: str
    channel: str
    total_cents: int
    currency: str
    sku: str
    quantity: int

    def validate(self) -> None:
        if self.total_cents < 0:
            raise ValidationError("must not be negative", field="total_cents", message_type="PlaceOrder")
        if self.quantity < 1:
            raise ValidationError("must be at least 1", field="quantity", message_type="PlaceOrder")


class AcceptOrder(Command):
    """Accept a placed order for fulfilment."""

    order_id: str
    accepted_at: str


class Order(StateStoredAggregate):
    """A customer's order: accepted at most once, and only after it was placed."""

    market: str = ""
    channel: str = ""
    total_cents: int = 0
    currency: str = ""
    sku: str = ""
    quantity: int = 0
    accepted_at: str | None = None

    @classmethod
    def place(cls, command: PlaceOrder) -> Order:
        order = cls(command.order_id)
        order.record(
            OrderPlaced(
                market=command.market, channel=command.channel, total_cents=command.total_cents,
                currency=command.currency, sku=command.sku, quantity=command.quantity,
            )
        )  # fmt: skip
        return order

    def accept(self, accepted_at: str) -> None:
        if self.accepted_at is not None:
            raise DomainError(f"Order {self.id} was accepted at {self.accepted_at} already; an order is accepted once")
        self.record(OrderAccepted(accepted_at=accepted_at))

    @applies
    def _placed(self, event: OrderPlaced) -> None:
        self.market, self.channel, self.total_cents = event.market, event.channel, event.total_cents
        self.currency, self.sku, self.quantity = event.currency, event.sku, event.quantity

    @applies
    def _accepted(self, event: OrderAccepted) -> None:
        self.accepted_at = event.accepted_at
