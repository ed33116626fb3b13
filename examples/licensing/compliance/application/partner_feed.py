"""Anti-corruption layer for the legacy partner feed: partners' usage reports in, validated local commands out.

Partners (distributors that resell our licenses) send one JSON object per usage report, in their
own vocabulary::

    {"report_id": "ACME-1001", "license": "<our license id>", "client": "<our buyer id>",
     "units_used": "12.50", "units_licensed": "10", "period_end": "31/12/2024"}

What each field means here, and how it is translated:

- ``report_id`` (text or integer, required): the partner's own id of the report. A report is
  identified by (partner, report_id): the gateway derives the message's event id from it, so a
  report sent twice is applied once (the consumer's inbox). A correction must carry a new
  report_id; one with the id of an earlier report is that report's duplicate.
- ``license``: our license id, as printed on the license the partner resold. It must be a license
  Compliance knows to be purchased (from ``LicensePurchaseConfirmed``); any other is refused.
- ``client``: who used the asset, our *buyer*; it must be the license's buyer.
- ``units_used`` / ``units_licensed``: amounts as decimal text (``"12"``, ``"12.50"``; JSON
  numbers are tolerated), at most two decimals, never negative, at most ``MAX_UNITS``. Partners
  count in parts (half a broadcast slot); a License counts whole uses, so a started unit counts as
  a use (``used`` = ceiling) and only whole units are allowed (``allowed`` = floor). Whether the
  report is over the allowance is decided on the exact amounts, and then ``used > allowed``
  holds after rounding too.
- ``period_end``: the last day the report covers, ``DD/MM/YYYY``.

Unknown extra fields are ignored (a tolerant reader). The semantics: a report over the allowance
(``units_used > units_licensed``) is an infringement: it becomes ``OpenInvestigation`` with
``source="partner:<name>"``, which opens the license's investigation, adds the report to an open
one, or reopens a closed one (the aggregate's rule). A report within the allowance changes no
aggregate; it is only recorded as received (see the infrastructure's partner-report table).

What cannot be understood raises :class:`PartnerReportRejected`, naming the field and what was
wrong with it; the consumer dead-letters the record with that text at once (no retry can fix it).
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from examples.licensing.compliance.domain import OpenInvestigation
from tidings.messaging import MessageError

__all__ = [
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
    "partner_event_id",
    "partner_of_source",
    "partner_source",
    "read_partner_report",
    "report_id_of",
]

#: The topic raw partner records travel on, from the gateway to the partner-feed consumer.
PARTNER_FEED_TOPIC = "compliance.partner_feed"
#: The ``event_type`` of every record on the feed (routed by name: the payload is the partner's raw record).
PARTNER_REPORT_TYPE = "compliance.PartnerUsageReport"
#: Namespace of the event ids derived from (partner, report_id) (fixed: changing it breaks de-duplication).
PARTNER_FEED_NAMESPACE = uuid.UUID("5f0c2d7e-8a41-4b6f-9e3d-1c7b2a9f4e60")
#: The partners' date format (day first), as their systems print it.
PARTNER_DATE_FORMAT = "%d/%m/%Y"
#: The largest amount of units one report may state; more is a typo or an attack, not usage.
MAX_UNITS = Decimal(1_000_000)

#: What a partner name looks like (it becomes part of event ids and the envelope's source).
PARTNER_NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_PARTNER_NAME = re.compile(PARTNER_NAME_PATTERN.strip("^$"))
_AMOUNT = re.compile(r"\d{1,7}(?:\.\d{1,2})?")
_SOURCE_PREFIX = "partner:"
_MAX_ID_LENGTH = 200


class PartnerReportRejected(MessageError):
    """A partner record that cannot be translated: which field, what was wrong, and which report it was."""

    def __init__(self, partner: str, report_id: str | None, field: str, problem: str) -> None:
        self.partner = partner
        self.report_id = report_id
        self.field = field
        self.problem = problem
        which = f"report {report_id!r}" if report_id is not None else "a report without a usable report_id"
        super().__init__(f"partner {partner!r}, {which}: {field}: {problem}")


@dataclass(frozen=True, slots=True)
class KnownLicense:
    """A license Compliance knows was purchased: whose it is and of which asset."""

    license_id: str
    asset_id: str
    buyer_id: str


@dataclass(frozen=True, slots=True)
class PartnerReport:
    """One partner usage report, validated and in our vocabulary (client → buyer, text → amounts, date)."""

    partner: str
    report_id: str
    license_id: str
    buyer_id: str
    units_used: Decimal
    units_licensed: Decimal
    period_end: date

    @property
    def over_allowance(self) -> bool:
        """Whether the report shows more units used than licensed (decided on the exact amounts)."""
        return self.units_used > self.units_licensed

    @property
    def source(self) -> str:
        """The ``source`` this report's infringements carry: ``partner:<name>``."""
        return partner_source(self.partner)

    def check_against(self, known: KnownLicense | None) -> KnownLicense:
        """The license this report is about; rejected if Compliance does not know it or the client is not its buyer."""
        if known is None:
            raise PartnerReportRejected(
                self.partner, self.report_id, "license",
                f"unknown license {self.license_id!r}: Compliance has seen no purchase of it — check the id, or "
                "replay this dead letter once the purchase is known",
            )  # fmt: skip
        if known.buyer_id != self.buyer_id:
            raise PartnerReportRejected(
                self.partner, self.report_id, "client",
                f"{self.buyer_id!r} is not the buyer of license {self.license_id!r} (it was sold to {known.buyer_id!r})",
            )  # fmt: skip
        return known

    def command(self, known: KnownLicense) -> OpenInvestigation | None:
        """The OpenInvestigation this report calls for, or None when it is within the allowance."""
        if not self.over_allowance:
            return None
        return OpenInvestigation(
            license_id=self.license_id,
            asset_id=known.asset_id,
            buyer_id=self.buyer_id,
            # A started unit is a use; only whole units are allowed (see the module docstring).
            used=math.ceil(self.units_used),
            allowed=math.floor(self.units_licensed),
            source=self.source,
        )


def check_partner_name(partner: str) -> str:
    """``partner`` if it is a usable partner name (letters, digits, ``_.-``, at most 64); ValueError otherwise."""
    if not isinstance(partner, str) or not _PARTNER_NAME.fullmatch(partner):
        raise ValueError(
            f"a partner name is 1 to 64 letters, digits, '_', '.' or '-' starting with a letter or digit, got {partner!r}"
        )
    return partner


def partner_source(partner: str) -> str:
    """The envelope ``source`` of records from ``partner`` (``partner:acme``)."""
    return f"{_SOURCE_PREFIX}{partner}"


def partner_of_source(source: str | None) -> str | None:
    """The partner named by an envelope ``source`` of the feed, or None if it names none."""
    if not source or not source.startswith(_SOURCE_PREFIX):
        return None
    partner = source[len(_SOURCE_PREFIX) :]
    return partner if _PARTNER_NAME.fullmatch(partner) else None


def report_id_of(data: Any) -> str | None:
    """The report_id of a decoded record as text, or None if it has none usable (for ids and messages)."""
    if not isinstance(data, dict):
        return None
    value = data.get("report_id")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip() and len(value) <= _MAX_ID_LENGTH:
        return value.strip()
    return None


def partner_event_id(partner: str, report_id: str) -> str:
    """The event id of report ``report_id`` of ``partner``: the same for every copy, so the inbox applies it once."""
    # Length-prefixed so ("a", "b:c") and ("a:b", "c") stay apart.
    return str(uuid.uuid5(PARTNER_FEED_NAMESPACE, f"{len(partner)}:{partner}:{report_id}"))


def read_partner_report(partner: str, data: Any) -> PartnerReport:
    """Validate a decoded partner record and translate it into our vocabulary; PartnerReportRejected names what is wrong."""
    if not isinstance(data, dict):
        raise PartnerReportRejected(
            partner, None, "record", f"is a JSON {_json_kind(data)}, not an object with the report's fields"
        )
    report_id = report_id_of(data)

    def reject(field: str, problem: str) -> PartnerReportRejected:
        return PartnerReportRejected(partner, report_id, field, problem)

    if report_id is None:
        raise reject(
            "report_id",
            _missing_or(data, "report_id", f"must be a non-blank text of at most {_MAX_ID_LENGTH} characters, or an integer"),
        )
    license_id = _text(data, "license", reject)
    client = _text(data, "client", reject)
    used = _amount(data, "units_used", reject)
    licensed = _amount(data, "units_licensed", reject)
    period_end = _date(data, "period_end", reject)
    return PartnerReport(partner, report_id, license_id, client, used, licensed, period_end)


# -- field readers ---------------------------------------------------------------------------------


def _missing_or(data: dict[str, Any], field: str, expectation: str) -> str:
    if field not in data or data[field] is None:
        return "is missing"
    return f"{expectation}; got {_shown(data[field])}"


def _text(data: dict[str, Any], field: str, reject: Any) -> str:
    value = data.get(field)
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_ID_LENGTH:
        raise reject(field, _missing_or(data, field, f"must be a non-blank text of at most {_MAX_ID_LENGTH} characters"))
    return value.strip()


def _amount(data: dict[str, Any], field: str, reject: Any) -> Decimal:
    value = data.get(field)
    expectation = "must be an amount like '12' or '12.50' (at most two decimals)"
    if value is None:
        raise reject(field, "is missing")
    if isinstance(value, bool):
        raise reject(field, f"{expectation}; got {_shown(value)}")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise reject(field, f"{expectation}; got {_shown(value)}")
        text = str(value)
        if value < 0:
            raise reject(field, f"must not be negative, got {_shown(value)}")
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("-") and _AMOUNT.fullmatch(text[1:]):
            raise reject(field, f"must not be negative, got {_shown(value)}")
        if not _AMOUNT.fullmatch(text):
            raise reject(field, f"{expectation}; got {_shown(value)}")
    else:
        raise reject(field, f"{expectation}; got {_shown(value)}")
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise reject(field, f"{expectation}; got {_shown(value)}") from None
    if amount.as_tuple().exponent < -2:  # type: ignore[operator]  # a JSON number like 1.005
        raise reject(field, f"{expectation}; got {_shown(value)}")
    if amount > MAX_UNITS:
        raise reject(field, f"must be at most {MAX_UNITS}, got {_shown(value)}")
    return amount


def _date(data: dict[str, Any], field: str, reject: Any) -> date:
    value = data.get(field)
    expectation = "must be a date as DD/MM/YYYY, like '31/12/2024'"
    if not isinstance(value, str):
        raise reject(field, _missing_or(data, field, expectation))
    try:
        return datetime.strptime(value.strip(), PARTNER_DATE_FORMAT).date()
    except ValueError:
        raise reject(field, f"{expectation}; got {_shown(value)}") from None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if value is None:
        return "null"
    return type(value).__name__
