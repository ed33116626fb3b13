"""Anti-corruption layer for Licensing's UsageViolationDetected: each violation becomes an OpenInvestigation."""

from __future__ import annotations

from examples.licensing.compliance.domain import OpenInvestigation
from examples.licensing.contracts import UsageViolationDetected

__all__ = ["LICENSING_SOURCE", "investigation_for_violation"]

#: The ``source`` of infringements Licensing detected itself (partners' are ``partner:<name>``).
LICENSING_SOURCE = "licensing"


def investigation_for_violation(event: UsageViolationDetected) -> OpenInvestigation:
    """The command that opens (or adds to) the investigation of the violated license."""
    # A field-for-field copy today; it is still a translation, so that a new version of the
    # contract changes this function and not the Investigation aggregate.
    return OpenInvestigation(
        license_id=event.license_id,
        asset_id=event.asset_id,
        buyer_id=event.buyer_id,
        used=event.used,
        allowed=event.allowed,
        source=LICENSING_SOURCE,
    )
