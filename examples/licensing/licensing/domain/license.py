"""The License aggregate: one asset for one buyer, offered, purchased at most once, its usage counted."""

from __future__ import annotations

from examples.licensing.licensing.domain.events import (
    BuyerId,
    LicenseOffered,
    LicensePurchased,
    UsageExceededLicense,
    UsageReported,
)
from examples.licensing.licensing.domain.identity import license_id_for
from tidings.domain import DomainError, StateStoredAggregate, applies

__all__ = ["License"]


class License(StateStoredAggregate, name="licensing.License"):
    """A license of one asset for one buyer: allowed uses, used count, sold flag and price.

    State-stored: usage reports keep arriving for as long as the asset is used, so the stream of a
    busy license grows without end, while a command needs only the counters; loading one row with
    its version stays constant-time, and the journal still keeps every event for audit and rebuilds.
    """

    asset_id: str = ""
    buyer_id: BuyerId = ""
    price_cents: int = 0
    currency: str = ""
    allowed_uses: int = 0
    used: int = 0
    sold: bool = False

    @property
    def offered(self) -> bool:
        """Whether this license has been offered (a fresh aggregate has not)."""
        return bool(self.asset_id)

    def offer(
        self, *, asset_id: str, buyer_id: str, price_cents: int, allowed_uses: int, currency: str = "EUR"
    ) -> None:
        """Record the offer of ``asset_id`` to ``buyer_id``; a license is offered once."""
        if self.offered:
            raise DomainError(
                f"License {self.id} was already offered to {self.buyer_id} "
                f"for {self.price_cents} cents ({self.currency}); an asset is offered to a buyer once"
            )
        expected = license_id_for(asset_id, buyer_id)
        if self.id != expected:
            # A programming error: any other id would let one buyer hold two licenses of one asset.
            raise ValueError(
                f"License {self.id} cannot hold the offer of {asset_id} to {buyer_id}; "
                f"its id must be license_id_for(asset_id, buyer_id) = {expected}"
            )
        self.record(
            LicenseOffered(
                asset_id=asset_id,
                buyer_id=buyer_id,
                price_cents=price_cents,
                currency=currency,
                allowed_uses=allowed_uses,
            )
        )

    def purchase(self, *, buyer_id: str) -> None:
        """Record the purchase by the buyer the license was offered to; a license is purchased at most once."""
        if not self.offered:
            raise DomainError(f"License {self.id} has not been offered; it can only be purchased after an offer")
        if self.sold:
            raise DomainError(f"License {self.id} was already purchased by {self.buyer_id}; a license is sold once")
        if buyer_id != self.buyer_id:
            raise DomainError(
                f"License {self.id} was offered to {self.buyer_id}, not to {buyer_id}; only they can buy it"
            )
        self.record(
            LicensePurchased(
                asset_id=self.asset_id, buyer_id=self.buyer_id, price_cents=self.price_cents, currency=self.currency
            )
        )

    def report_usage(self, *, uses: int) -> None:
        """Count ``uses`` more uses; past the allowance also record UsageExceededLicense (usage is never refused)."""
        if uses < 1:
            # ReportUsage.validate refuses this first; the guard keeps a direct caller from
            # lowering the count, which would hide usage that already happened.
            raise ValueError(f"uses must be at least 1, got {uses}")
        if not self.sold:
            raise DomainError(f"License {self.id} is not purchased yet; usage can only be reported after the purchase")
        used = self.used + uses
        asset_id, buyer_id, allowed = self.asset_id, self.buyer_id, self.allowed_uses
        self.record(UsageReported(asset_id=asset_id, buyer_id=buyer_id, uses=uses, used=used, allowed=allowed))
        # Usage already happened, so refusing the report would only lose evidence: it is counted,
        # and every report that leaves the total past the allowance is a violation on its own.
        if used > allowed:
            self.record(UsageExceededLicense(asset_id=asset_id, buyer_id=buyer_id, used=used, allowed=allowed))

    @applies
    def _offered(self, event: LicenseOffered) -> None:
        self.asset_id = event.asset_id
        self.buyer_id = event.buyer_id
        self.price_cents = event.price_cents
        self.currency = event.currency
        self.allowed_uses = event.allowed_uses

    @applies
    def _purchased(self, event: LicensePurchased) -> None:
        self.sold = True

    @applies
    def _usage_reported(self, event: UsageReported) -> None:
        self.used = event.used
