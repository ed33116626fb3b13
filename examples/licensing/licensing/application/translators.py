"""Translators from Licensing's domain events to its public contracts, run in the command's transaction.

Every contract is published with the license id as its partition key (the unit of work's default:
the aggregate that recorded the event). One license's purchase, usage reports and violations are
then delivered in the order they happened, which is what a reader such as Compliance needs to see
a violation after the reports that led to it; keying by asset instead would serialise every buyer
of a popular asset behind one another for no invariant that spans licenses.
"""

from __future__ import annotations

from examples.licensing.contracts import (
    LICENSE_PURCHASE_CONFIRMED_TOPIC,
    LICENSE_USAGE_REPORTED_TOPIC,
    USAGE_VIOLATION_DETECTED_TOPIC,
    LicensePurchaseConfirmed,
    LicenseUsageReported,
    UsageViolationDetected,
)
from examples.licensing.licensing.domain import LicensePurchased, UsageExceededLicense, UsageReported
from tidings.app import Application
from tidings.messaging import Envelope

__all__ = [
    "purchase_confirmed",
    "register_translators",
    "usage_reported",
    "usage_violation_detected",
]


def _license_id(envelope: Envelope) -> str:
    if not envelope.aggregate_id:
        # Only a License records these events, so its id is always there; say so if it is not.
        raise ValueError(f"{envelope.event_type} {envelope.event_id} carries no aggregate id; it must come from a License")
    return envelope.aggregate_id


def purchase_confirmed(event: LicensePurchased, envelope: Envelope) -> LicensePurchaseConfirmed:
    """LicensePurchased → LicensePurchaseConfirmed, always the current version (v2, with the currency)."""
    return LicensePurchaseConfirmed(
        license_id=_license_id(envelope),
        asset_id=event.asset_id,
        buyer_id=event.buyer_id,
        price_cents=event.price_cents,
        currency=event.currency,
    )


def usage_reported(event: UsageReported, envelope: Envelope) -> LicenseUsageReported:
    """UsageReported → LicenseUsageReported (every report, within the allowance or past it)."""
    return LicenseUsageReported(
        license_id=_license_id(envelope),
        asset_id=event.asset_id,
        buyer_id=event.buyer_id,
        uses=event.uses,
        used=event.used,
        allowed=event.allowed,
    )


def usage_violation_detected(event: UsageExceededLicense, envelope: Envelope) -> UsageViolationDetected:
    """UsageExceededLicense → UsageViolationDetected (one per report that leaves the total past the allowance)."""
    return UsageViolationDetected(
        license_id=_license_id(envelope),
        asset_id=event.asset_id,
        buyer_id=event.buyer_id,
        used=event.used,
        allowed=event.allowed,
    )


def register_translators(app: Application) -> Application:
    """Publish ``app``'s purchases, usage reports and violations on their contracts' topics."""
    app.translator(LicensePurchased, topic=LICENSE_PURCHASE_CONFIRMED_TOPIC)(purchase_confirmed)
    app.translator(UsageReported, topic=LICENSE_USAGE_REPORTED_TOPIC)(usage_reported)
    app.translator(UsageExceededLicense, topic=USAGE_VIOLATION_DETECTED_TOPIC)(usage_violation_detected)
    return app
