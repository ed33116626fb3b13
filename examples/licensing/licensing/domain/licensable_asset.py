"""The LicensableAsset aggregate: Licensing's record that an asset is searchable, which guards every offer of it."""

from __future__ import annotations

from examples.licensing.licensing.domain.events import LicensableAssetRegistered
from examples.licensing.licensing.domain.license import License
from tidings.domain import DomainError, StateStoredAggregate, applies

__all__ = ["LicensableAsset"]


class LicensableAsset(StateStoredAggregate, name="licensing.LicensableAsset"):
    """An asset Licensing may offer, registered from Asset Processing's AssetReadyForSearch through the ACL.

    State-stored: it is a small reference record written once and read on every offer; there is no
    history worth replaying. Its id is the asset's id in Asset Processing (kept as an opaque string).
    """

    owner_id: str = ""
    title: str = ""
    media_type: str = ""

    @property
    def registered(self) -> bool:
        """Whether Licensing has been told this asset is searchable."""
        return bool(self.owner_id)

    def register(self, *, owner_id: str, title: str, media_type: str) -> None:
        """Record that the asset is searchable; registering it again changes nothing (contracts may be redelivered)."""
        if self.registered:
            return
        self.record(LicensableAssetRegistered(owner_id=owner_id, title=title, media_type=media_type))

    def offer_license(
        self, license: License, *, buyer_id: str, price_cents: int, allowed_uses: int, currency: str = "EUR"
    ) -> None:
        """Offer this asset to ``buyer_id`` through ``license`` (new, or loaded to refuse a second offer).

        Only a registered asset can be offered, and never to its own owner. The caller passes the
        license it found under ``license_id_for(asset, buyer)`` or a fresh one with that id, so a
        repeated offer is refused here as a DomainError like every other broken rule.
        """
        if not self.registered:
            raise DomainError(
                f"Asset {self.id} is not searchable yet; only searchable assets can be offered — "
                "wait for its processing to complete"
            )
        if buyer_id == self.owner_id:
            raise DomainError(
                f"Asset {self.id} belongs to {buyer_id}; an owner does not buy a license to their own asset"
            )
        license.offer(
            asset_id=self.id, buyer_id=buyer_id, price_cents=price_cents, allowed_uses=allowed_uses, currency=currency
        )

    @applies
    def _registered(self, event: LicensableAssetRegistered) -> None:
        self.owner_id = event.owner_id
        self.title = event.title
        self.media_type = event.media_type
