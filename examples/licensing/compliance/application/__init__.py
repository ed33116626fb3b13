"""Application layer of Compliance: command handlers and the anti-corruption layers that feed them."""

from examples.licensing.compliance.application.investigations import CONTEXT, compliance_application
from examples.licensing.compliance.application.partner_feed import (
    MAX_UNITS,
    PARTNER_DATE_FORMAT,
    PARTNER_FEED_NAMESPACE,
    PARTNER_FEED_TOPIC,
    PARTNER_NAME_PATTERN,
    PARTNER_REPORT_TYPE,
    KnownLicense,
    PartnerReport,
    PartnerReportRejected,
    check_partner_name,
    partner_event_id,
    partner_of_source,
    partner_source,
    read_partner_report,
    report_id_of,
)
from examples.licensing.compliance.application.violations import LICENSING_SOURCE, investigation_for_violation

__all__ = [
    "CONTEXT",
    "LICENSING_SOURCE",
    "MAX_UNITS",
    "PARTNER_DATE_FORMAT",
    "PARTNER_FEED_NAMESPACE",
    "PARTNER_FEED_TOPIC",
    "PARTNER_NAME_PATTERN",
    "PARTNER_REPORT_TYPE",
    "KnownLicense",
    "PartnerReport",
    "PartnerReportRejected",
    "check_partner_name",
    "compliance_application",
    "investigation_for_violation",
    "partner_event_id",
    "partner_of_source",
    "partner_source",
    "read_partner_report",
    "report_id_of",
]
