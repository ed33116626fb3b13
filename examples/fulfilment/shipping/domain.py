"""Shipping's domain: a shipment is opened for an accepted order and waits for the warehouse to release it."""

from __future__ import annotations

from tidings.domain import Command, DomainError, DomainEvent, StateStoredAggregate, applies

__all__ = ["OpenShipment", "ReleaseToWarehouse", "Shipment", "ShipmentOpened", "ShipmentReleased"]


class ShipmentOpened(DomainEvent):
    """A shipment was opened for an accepted order; it awaits warehouse release."""

    market: str
    sku: str
    quantity: int
    #: The contract message that opened it (for reconciliation and tracing).
    accepted_event_id: str


class ShipmentReleased(DomainEvent):
    """The warehouse released the shipment for picking."""


class OpenShipment(Command):
    """Open the shipment of an accepted order (once per order: a second acceptance of it is a duplicate)."""

    order_id: str
    market: str
    sku: str
    quantity: int
    accepted_event_id: str


class ReleaseToWarehouse(Command):
    """Release an open shipment to the warehouse."""

    order_id: str


class Shipment(StateStoredAggregate):
    """One order's shipment, identified by the order id: opened once, released once."""

    market: str = ""
    sku: str = ""
    quantity: int = 0
    status: str = ""
    accepted_event_id: str = ""

    @classmethod
    def open(cls, command: OpenShipment) -> Shipment:
        shipment = cls(command.order_id)
        shipment.record(
            ShipmentOpened(market=command.market, sku=command.sku, quantity=command.quantity, accepted_event_id=command.accepted_event_id)
        )
        return shipment

    def release(self) -> None:
        if self.status != "awaiting_release":
            raise DomainError(f"Shipment {self.id} is {self.status}, not awaiting release; it is released once")
        self.record(ShipmentReleased())

    @applies
    def _opened(self, event: ShipmentOpened) -> None:
        self.market, self.sku, self.quantity = event.market, event.sku, event.quantity
        self.accepted_event_id = event.accepted_event_id
        self.status = "awaiting_release"

    @applies
    def _released(self, event: ShipmentReleased) -> None:
        self.status = "released"
