"""The quickstart's domain: a license for one media asset, bought once, used within an allowance."""

from __future__ import annotations

from tidings.domain import Command, DomainError, DomainEvent, StateStoredAggregate, ValidationError, applies


class LicenseOffered(DomainEvent):
    """An asset was put up for licensing at a price with a usage allowance."""

    asset_id: str
    price_cents: int
    allowed_uses: int


class LicensePurchased(DomainEvent):
    """A buyer bought the license."""

    buyer_id: str


class UsageReported(DomainEvent):
    """The buyer used the licensed asset."""

    uses: int


class UsageExceededLicense(DomainEvent):
    """Reported usage went past the allowance."""

    used: int
    allowed: int


class OfferLicense(Command):
    """Offer a license for an asset."""

    license_id: str
    asset_id: str
    price_cents: int
    allowed_uses: int

    def validate(self) -> None:
        if self.price_cents <= 0:
            raise ValidationError("must be positive", field="price_cents", message_type="OfferLicense")
        if self.allowed_uses < 1:
            raise ValidationError("must be at least 1", field="allowed_uses", message_type="OfferLicense")


class PurchaseLicense(Command):
    """Buy an offered license."""

    license_id: str
    buyer_id: str


class ReportUsage(Command):
    """Report uses of a purchased license."""

    license_id: str
    uses: int


class License(StateStoredAggregate):
    """A license: purchased at most once; usage only after purchase; over-use is recorded, not refused."""

    asset_id: str = ""
    price_cents: int = 0
    allowed_uses: int = 0
    used: int = 0
    buyer_id: str | None = None

    @classmethod
    def offer(cls, license_id: str, asset_id: str, price_cents: int, allowed_uses: int) -> License:
        license = cls(license_id)
        license.record(LicenseOffered(asset_id=asset_id, price_cents=price_cents, allowed_uses=allowed_uses))
        return license

    def purchase(self, buyer_id: str) -> None:
        if self.buyer_id is not None:
            raise DomainError(f"License {self.id} was already purchased by {self.buyer_id}; a license is sold once")
        self.record(LicensePurchased(buyer_id=buyer_id))

    def report_usage(self, uses: int) -> None:
        if self.buyer_id is None:
            raise DomainError(f"License {self.id} is not purchased yet; usage can only be reported after purchase")
        self.record(UsageReported(uses=uses))
        if self.used > self.allowed_uses:
            self.record(UsageExceededLicense(used=self.used, allowed=self.allowed_uses))

    @applies
    def _offered(self, event: LicenseOffered) -> None:
        self.asset_id = event.asset_id
        self.price_cents = event.price_cents
        self.allowed_uses = event.allowed_uses

    @applies
    def _purchased(self, event: LicensePurchased) -> None:
        self.buyer_id = event.buyer_id

    @applies
    def _used(self, event: UsageReported) -> None:
        self.used += event.uses
