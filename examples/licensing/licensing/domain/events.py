"""Domain events of Licensing: assets become licensable, licenses are offered, bought and used.

Each event carries what its translator to a public contract needs (asset, buyer, price), so the
translation is a pure function of the event and its envelope and never has to load the aggregate.
"""

from __future__ import annotations

from typing import Annotated

from tidings.domain import DomainEvent, Personal

#: A buyer's id is personal data of that buyer: sealed with their key, masked once they are forgotten.
BuyerId = Annotated[str, Personal(subject="buyer_id")]

__all__ = [
    "BuyerId",
    "LicensableAssetRegistered",
    "LicenseOffered",
    "LicensePurchased",
    "UsageReported",
    "UsageExceededLicense",
]


class LicensableAssetRegistered(DomainEvent, name="licensing.LicensableAssetRegistered"):
    """Asset Processing reported an asset searchable; Licensing may now offer licenses for it."""

    owner_id: str
    title: str
    media_type: str


class LicenseOffered(DomainEvent, name="licensing.LicenseOffered"):
    """An asset was offered to one buyer at a price with a usage allowance."""

    asset_id: str
    buyer_id: BuyerId
    price_cents: int
    currency: str
    allowed_uses: int


class LicensePurchased(DomainEvent, name="licensing.LicensePurchased"):
    """The buyer bought the offered license."""

    asset_id: str
    buyer_id: BuyerId
    price_cents: int
    currency: str


class UsageReported(DomainEvent, name="licensing.UsageReported"):
    """The buyer reported ``uses`` uses; ``used`` is the running total after this report."""

    asset_id: str
    buyer_id: BuyerId
    uses: int
    used: int
    allowed: int


class UsageExceededLicense(DomainEvent, name="licensing.UsageExceededLicense"):
    """A usage report left the running total past the allowance (recorded with, not instead of, the report)."""

    asset_id: str
    buyer_id: BuyerId
    used: int
    allowed: int
