"""The pure domain of Licensing: the License and LicensableAsset aggregates, their commands, events and identity."""

from examples.licensing.licensing.domain.commands import (
    MAX_USES_PER_REPORT,
    OfferLicense,
    PurchaseLicense,
    RegisterLicensableAsset,
    ReportUsage,
)
from examples.licensing.licensing.domain.events import (
    LicensableAssetRegistered,
    LicenseOffered,
    LicensePurchased,
    UsageExceededLicense,
    UsageReported,
)
from examples.licensing.licensing.domain.identity import LICENSE_NAMESPACE, license_id_for
from examples.licensing.licensing.domain.licensable_asset import LicensableAsset
from examples.licensing.licensing.domain.license import License

__all__ = [
    "LICENSE_NAMESPACE",
    "MAX_USES_PER_REPORT",
    "LicensableAsset",
    "LicensableAssetRegistered",
    "License",
    "LicenseOffered",
    "LicensePurchased",
    "OfferLicense",
    "PurchaseLicense",
    "RegisterLicensableAsset",
    "ReportUsage",
    "UsageExceededLicense",
    "UsageReported",
    "license_id_for",
]
