"""Integration-event contracts: the only code the bounded contexts share, each a named, versioned, flat event."""

from examples.licensing.contracts.asset_processing import STALLED_STAGES, AssetProcessingStalled, AssetReadyForSearch
from examples.licensing.contracts.catalog import CONTRACTS, UPCASTERS, contract_registry, register_contracts
from examples.licensing.contracts.licensing import (
    V1_CURRENCY,
    LicensePurchaseConfirmed,
    LicensePurchaseConfirmedV1,
    LicenseUsageReported,
    UsageViolationDetected,
    license_purchase_confirmed_v1_to_v2,
)
from examples.licensing.contracts.topics import (
    ASSET_PROCESSING_STALLED_TOPIC,
    ASSET_READY_FOR_SEARCH_TOPIC,
    LICENSE_PURCHASE_CONFIRMED_TOPIC,
    LICENSE_USAGE_REPORTED_TOPIC,
    USAGE_VIOLATION_DETECTED_TOPIC,
)

__all__ = [
    "ASSET_PROCESSING_STALLED_TOPIC",
    "ASSET_READY_FOR_SEARCH_TOPIC",
    "CONTRACTS",
    "LICENSE_PURCHASE_CONFIRMED_TOPIC",
    "LICENSE_USAGE_REPORTED_TOPIC",
    "STALLED_STAGES",
    "UPCASTERS",
    "USAGE_VIOLATION_DETECTED_TOPIC",
    "V1_CURRENCY",
    "AssetProcessingStalled",
    "AssetReadyForSearch",
    "LicensePurchaseConfirmed",
    "LicensePurchaseConfirmedV1",
    "LicenseUsageReported",
    "UsageViolationDetected",
    "contract_registry",
    "license_purchase_confirmed_v1_to_v2",
    "register_contracts",
]
