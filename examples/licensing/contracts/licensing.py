"""Contracts published by Licensing: purchases, usage reports and usage past a license's allowance."""

from __future__ import annotations

from typing import Annotated, Any

from examples.licensing.contracts.topics import (
    LICENSE_PURCHASE_CONFIRMED_TOPIC,
    LICENSE_USAGE_REPORTED_TOPIC,
    USAGE_VIOLATION_DETECTED_TOPIC,
)
from tidings.domain import Personal
from tidings.messaging import IntegrationEvent

#: The buyer's id is personal data of that buyer: published sealed with their key, masked once they
#: are forgotten (``tidings subjects forget BUYER_ID``); consumers see plaintext or the mask.
BuyerId = Annotated[str, Personal(subject="buyer_id")]

__all__ = [
    "LicensePurchaseConfirmed",
    "LicensePurchaseConfirmedV1",
    "LicenseUsageReported",
    "UsageViolationDetected",
    "V1_CURRENCY",
    "license_purchase_confirmed_v1_to_v2",
]

#: The currency of every v1 purchase: v1 was published while Licensing sold in euros only.
V1_CURRENCY = "EUR"


class LicensePurchaseConfirmedV1(
    IntegrationEvent, name="licensing.LicensePurchaseConfirmed", version=1,
    topic=LICENSE_PURCHASE_CONFIRMED_TOPIC, key="license_id", importance="critical",
):
    """Version 1 of LicensePurchaseConfirmed as it was published, kept to document and produce old payloads.

    Never register it: a registry knows one class per name (the current one, v2) and reads v1
    payloads through :func:`license_purchase_confirmed_v1_to_v2`.
    """

    license_id: str
    asset_id: str
    buyer_id: BuyerId
    price_cents: int


class LicensePurchaseConfirmed(
    IntegrationEvent, name="licensing.LicensePurchaseConfirmed", version=2,
    topic=LICENSE_PURCHASE_CONFIRMED_TOPIC, key="license_id", importance="critical",
):
    """A buyer bought a license for an asset at a price; v2 adds the price's ``currency`` (ISO 4217)."""

    license_id: str
    asset_id: str
    buyer_id: BuyerId
    price_cents: int
    # Required, not defaulted: a v2 reader must never guess the currency of a v2 payload; only
    # the upcaster may, because for v1 the answer is known.
    currency: str


def license_purchase_confirmed_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Upcast a LicensePurchaseConfirmed v1 payload to v2 by adding the currency every v1 sale was in."""
    # Overwrite rather than setdefault: v1 had no currency field, so a stray "currency" key in a v1
    # payload was never part of the contract and v1 readers ignored it; the price was in euros.
    return {**data, "currency": V1_CURRENCY}


class LicenseUsageReported(
    IntegrationEvent, name="licensing.LicenseUsageReported", version=1,
    topic=LICENSE_USAGE_REPORTED_TOPIC, key="license_id", importance="high",
):
    """A buyer reported uses of a licensed asset; ``used`` is the running total after this report."""

    license_id: str
    asset_id: str
    buyer_id: BuyerId
    uses: int
    used: int
    allowed: int


class UsageViolationDetected(
    IntegrationEvent, name="licensing.UsageViolationDetected", version=1,
    topic=USAGE_VIOLATION_DETECTED_TOPIC, key="license_id", importance="critical",
):
    """A buyer's reported usage went past the license's allowance (``used`` > ``allowed``)."""

    license_id: str
    asset_id: str
    buyer_id: BuyerId
    used: int
    allowed: int
