"""Commands of Licensing, each checking the values of its own fields."""

from __future__ import annotations

import re

from examples.licensing.licensing.domain.identity import license_id_for
from tidings.domain import Command, ValidationError

__all__ = [
    "MAX_ALLOWED_USES",
    "MAX_PRICE_CENTS",
    "MAX_USES_PER_REPORT",
    "RegisterLicensableAsset",
    "OfferLicense",
    "PurchaseLicense",
    "ReportUsage",
]

#: One report counts at most this many uses; a bigger number is a typo or an attack, not usage.
MAX_USES_PER_REPORT = 1_000_000
#: The most uses one license allows, and its highest price (ten billion in a currency's units):
#: bounds that keep every sum of them far inside the 64-bit integers the stores hold.
MAX_ALLOWED_USES = 1_000_000_000
MAX_PRICE_CENTS = 1_000_000_000_000

_CURRENCY = re.compile(r"[A-Z]{3}")


def _invalid(command: Command, field: str, reason: str) -> ValidationError:
    return ValidationError(reason, field=field, message_type=type(command).__name__)


def _require_text(command: Command, field: str, value: str) -> None:
    if not value.strip():
        raise _invalid(command, field, "must not be blank")


class RegisterLicensableAsset(Command, name="licensing.RegisterLicensableAsset"):
    """Remember that an asset is searchable so it can be offered (sent by the ACL on AssetReadyForSearch)."""

    asset_id: str
    owner_id: str
    title: str
    media_type: str

    def validate(self) -> None:
        """Refuse a blank asset id, owner, title or media type."""
        for field in ("asset_id", "owner_id", "title", "media_type"):
            _require_text(self, field, getattr(self, field))


class OfferLicense(Command, name="licensing.OfferLicense"):
    """Offer a searchable asset to one buyer at a price with a number of allowed uses."""

    asset_id: str
    buyer_id: str
    price_cents: int
    allowed_uses: int
    currency: str = "EUR"

    @property
    def license_id(self) -> str:
        """The id of the license this offer creates (one per asset and buyer)."""
        return license_id_for(self.asset_id, self.buyer_id)

    def validate(self) -> None:
        """Refuse a blank asset or buyer, a non-positive price, fewer than one use, or a malformed currency."""
        _require_text(self, "asset_id", self.asset_id)
        _require_text(self, "buyer_id", self.buyer_id)
        if self.price_cents <= 0:
            raise _invalid(self, "price_cents", f"must be positive, got {self.price_cents}")
        if self.price_cents > MAX_PRICE_CENTS:
            raise _invalid(self, "price_cents", f"must be at most {MAX_PRICE_CENTS}, got {self.price_cents}")
        if self.allowed_uses < 1:
            raise _invalid(self, "allowed_uses", f"must be at least 1, got {self.allowed_uses}")
        if self.allowed_uses > MAX_ALLOWED_USES:
            raise _invalid(self, "allowed_uses", f"must be at most {MAX_ALLOWED_USES}, got {self.allowed_uses}")
        if not _CURRENCY.fullmatch(self.currency):
            raise _invalid(self, "currency", f"must be an ISO 4217 code like 'EUR', got {self.currency!r}")


class PurchaseLicense(Command, name="licensing.PurchaseLicense"):
    """Buy an offered license as the buyer it was offered to."""

    license_id: str
    buyer_id: str

    def validate(self) -> None:
        """Refuse a blank license id or buyer."""
        _require_text(self, "license_id", self.license_id)
        _require_text(self, "buyer_id", self.buyer_id)


class ReportUsage(Command, name="licensing.ReportUsage"):
    """Report that the buyer of a purchased license used the asset ``uses`` more times."""

    license_id: str
    uses: int

    def validate(self) -> None:
        """Refuse a blank license id or a use count outside 1..MAX_USES_PER_REPORT."""
        _require_text(self, "license_id", self.license_id)
        if self.uses < 1:
            raise _invalid(self, "uses", f"must be at least 1, got {self.uses}")
        if self.uses > MAX_USES_PER_REPORT:
            raise _invalid(self, "uses", f"must be at most {MAX_USES_PER_REPORT} per report, got {self.uses}")
