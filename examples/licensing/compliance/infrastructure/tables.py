"""Compliance's own tables beside its aggregates: the licenses it knows were purchased, and the partner reports it received.

Neither is a projection: ``compliance_known_licenses`` is reference data the partner-feed ACL checks
reports against, learnt from Licensing's contracts (not from this context's journal, so a rebuild
could not recreate it); ``compliance_partner_reports`` is the record of each partner report applied,
written in the same transaction as the report's inbox row and its commands. The consumers create
both tables before they start (:func:`ensure_tables`), so no migration of tidings is involved.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, date, datetime

from examples.licensing.compliance.application import KnownLicense, PartnerReport
from tidings.store import Store

__all__ = [
    "KNOWN_LICENSES",
    "PARTNER_REPORTS",
    "PartnerReportRecord",
    "ensure_tables",
    "find_known_license",
    "partner_reports",
    "record_partner_report",
    "remember_license",
]

KNOWN_LICENSES = "compliance_known_licenses"
PARTNER_REPORTS = "compliance_partner_reports"

_DDL = (
    f"CREATE TABLE IF NOT EXISTS {KNOWN_LICENSES} ("
    "license_id TEXT PRIMARY KEY, asset_id TEXT NOT NULL, buyer_id TEXT NOT NULL)",
    # Amounts are kept as the exact decimal text they were read as; dates and times as ISO text,
    # so both dialects store and sort them the same way.
    f"CREATE TABLE IF NOT EXISTS {PARTNER_REPORTS} ("
    "partner TEXT NOT NULL, report_id TEXT NOT NULL, event_id TEXT NOT NULL, license_id TEXT NOT NULL, "
    "buyer_id TEXT NOT NULL, units_used TEXT NOT NULL, units_licensed TEXT NOT NULL, period_end TEXT NOT NULL, "
    "outcome TEXT NOT NULL, received_at TEXT NOT NULL, PRIMARY KEY (partner, report_id))",
)


@dataclass(frozen=True, slots=True)
class PartnerReportRecord:
    """One partner report as Compliance applied it: what it said and what it led to."""

    partner: str
    report_id: str
    event_id: str
    license_id: str
    buyer_id: str
    units_used: str
    units_licensed: str
    period_end: date
    #: "infringement" (it opened or added to an investigation) or "within allowance".
    outcome: str
    received_at: datetime


async def ensure_tables(store: Store, attempts: int = 5) -> None:
    """Create Compliance's tables if they are missing (idempotent; safe from several processes at once)."""
    for attempt in range(attempts):
        try:
            async with store.transaction() as tx:
                for statement in _DDL:
                    await tx.run(statement)
            return
        except Exception:
            # Two processes creating the same table at once on PostgreSQL: one of them gets a
            # unique violation on the catalogue even with IF NOT EXISTS; the next try sees the table.
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))


async def find_known_license(tx: Store, license_id: str) -> KnownLicense | None:
    """The purchased license ``license_id`` as Compliance knows it, or None."""
    rows = await tx.fetch(f"SELECT asset_id, buyer_id FROM {KNOWN_LICENSES} WHERE license_id = ?", (license_id,))
    return KnownLicense(license_id, rows[0][0], rows[0][1]) if rows else None


REMEMBER_LICENSE = (
    f"INSERT INTO {KNOWN_LICENSES} (license_id, asset_id, buyer_id) VALUES (?, ?, ?) "
    "ON CONFLICT (license_id) DO UPDATE SET asset_id = excluded.asset_id, buyer_id = excluded.buyer_id"
)


async def remember_license(tx: Store, license_id: str, asset_id: str, buyer_id: str) -> None:
    """Remember (or refresh) that ``license_id`` of ``asset_id`` was sold to ``buyer_id``."""
    await tx.run(REMEMBER_LICENSE, (license_id, asset_id, buyer_id))


async def record_partner_report(
    tx: Store, report: PartnerReport, *, event_id: str, outcome: str, received_at: datetime
) -> bool:
    """Record ``report`` as applied; False if (partner, report_id) was applied before (a duplicate)."""
    # The inbox already skips a second copy of one event id; this key also catches a report that
    # reached the feed under another event id (published around the gateway, or by an old one).
    rows = await tx.fetch(
        f"INSERT INTO {PARTNER_REPORTS} (partner, report_id, event_id, license_id, buyer_id, units_used, "
        "units_licensed, period_end, outcome, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (partner, report_id) DO NOTHING RETURNING report_id",
        (
            report.partner, report.report_id, event_id, report.license_id, report.buyer_id,
            str(report.units_used), str(report.units_licensed), report.period_end.isoformat(), outcome,
            _iso(received_at),
        ),
    )  # fmt: skip
    return bool(rows)


async def partner_reports(store: Store, partner: str | None = None) -> list[PartnerReportRecord]:
    """Every partner report applied (of ``partner``, or of all), oldest received first."""
    sql = (
        "SELECT partner, report_id, event_id, license_id, buyer_id, units_used, units_licensed, period_end, outcome, "
        f"received_at FROM {PARTNER_REPORTS}"
    )
    params: tuple[str, ...] = ()
    if partner is not None:
        sql += " WHERE partner = ?"
        params = (partner,)
    rows = await store.fetch(sql + " ORDER BY received_at, partner, report_id", params)
    return [
        PartnerReportRecord(
            row[0], row[1], row[2], row[3], row[4], row[5], row[6], date.fromisoformat(row[7]), row[8],
            datetime.fromisoformat(row[9]),
        )
        for row in rows
    ]  # fmt: skip


def _iso(moment: datetime) -> str:
    # Fixed width (always microseconds, always UTC) so the text sorts as the time does.
    return moment.astimezone(UTC).isoformat(timespec="microseconds")
