"""Integration events: the public, versioned contracts other bounded contexts depend on."""

from __future__ import annotations

from tidings.domain.messages import Message

__all__ = ["IntegrationEvent"]


class IntegrationEvent(Message):
    """A flat, serialisable, versioned fact published to other contexts.

    Give it a stable dotted name and bump ``version`` on any change a consumer would notice::

        class LicensePurchaseConfirmed(IntegrationEvent, name="licensing.LicensePurchaseConfirmed", version=2):
            license_id: str
            buyer_id: str
            price_cents: int
            currency: str = "EUR"
    """
