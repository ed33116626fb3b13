"""Every current contract and upcaster in one place, and the function that teaches them to a registry."""

from __future__ import annotations

from examples.licensing.contracts.asset_processing import AssetProcessingStalled, AssetReadyForSearch
from examples.licensing.contracts.licensing import (
    LicensePurchaseConfirmed,
    LicenseUsageReported,
    UsageViolationDetected,
    license_purchase_confirmed_v1_to_v2,
)
from tidings.messaging import IntegrationEvent, MessageRegistry, Upcaster

__all__ = ["CONTRACTS", "UPCASTERS", "contract_registry", "register_contracts"]

#: The current version of every integration event the platform's contexts exchange.
CONTRACTS: tuple[type[IntegrationEvent], ...] = (
    AssetReadyForSearch,
    AssetProcessingStalled,
    LicensePurchaseConfirmed,
    LicenseUsageReported,
    UsageViolationDetected,
)

#: (contract name, from version) → the function that turns that version into the next one.
UPCASTERS: dict[tuple[str, int], Upcaster] = {
    (LicensePurchaseConfirmed.message_name, 1): license_purchase_confirmed_v1_to_v2,
}


def register_contracts(registry: MessageRegistry) -> MessageRegistry:
    """Register every current contract and its upcasters with ``registry`` and return it."""
    registry.register(*CONTRACTS)
    for (name, from_version), upcaster in UPCASTERS.items():
        registry.upcaster(name, from_version)(upcaster)
    return registry


def contract_registry() -> MessageRegistry:
    """A fresh registry that reads every version of every contract (for consumers and tests)."""
    return register_contracts(MessageRegistry())
