"""ComplianceAlertsFeed: the open investigations, newest first, for the compliance team's dashboard.

Fed by the projector from Compliance's own journal. An investigation enters the feed when an
infringement opens (or reopens) it, gathers later infringements while open, shows who was asked to
review it, and leaves the feed when it is closed. "Newest" is when it was (re)opened; ties go by id
so the order is the same after a rebuild. Times are fixed-width UTC ISO text: both dialects store
and sort them alike. Each alert keeps its investigation's tenant ('' for none), so a tenant's query
lists only its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from examples.licensing.compliance.domain import (
    InfringementDetected,
    InvestigationClosed,
    InvestigationStatus,
    ReviewRequested,
)
from tidings.messaging import Envelope
from tidings.runtime import Projection, handles
from tidings.store import Store

__all__ = ["ALERTS_TABLE", "Alert", "ComplianceAlertsFeed", "open_alerts"]

ALERTS_TABLE = "compliance_alerts"


@dataclass(frozen=True, slots=True)
class Alert:
    """One open investigation as the dashboard lists it."""

    investigation_id: str
    license_id: str
    asset_id: str
    buyer_id: str
    #: "open", or "under_review" once a reviewer was asked.
    status: str
    #: Infringements reported since the investigation was (re)opened.
    infringements: int
    #: The worst usage reported, against the allowance it was measured with.
    used: int
    allowed: int
    #: Who reported the latest infringement ("licensing", "partner:<name>").
    last_source: str
    reviewer: str | None
    opened_at: datetime
    last_reported_at: datetime


class ComplianceAlertsFeed(Projection, name="compliance_alerts_feed"):
    """Open investigations with their latest evidence; closed ones leave the feed."""

    tables = {
        ALERTS_TABLE: (
            "CREATE TABLE {compliance_alerts} (investigation_id TEXT PRIMARY KEY, license_id TEXT NOT NULL, "
            "asset_id TEXT NOT NULL, buyer_id TEXT NOT NULL, status TEXT NOT NULL, infringements INTEGER NOT NULL, "
            "used INTEGER NOT NULL, allowed INTEGER NOT NULL, last_source TEXT NOT NULL, reviewer TEXT, "
            "opened_at TEXT NOT NULL, last_reported_at TEXT NOT NULL, tenant TEXT NOT NULL);"
            "CREATE INDEX {compliance_alerts}_newest ON {compliance_alerts} (opened_at DESC, investigation_id)"
        ),
    }

    @handles
    def infringement_detected(self, event: InfringementDetected, envelope: Envelope) -> None:
        """Open (or reopen) the alert, or add the infringement to the open one, keeping the worst usage."""
        at = _iso(envelope.occurred_at)
        self.execute(
            "INSERT INTO {compliance_alerts} (investigation_id, license_id, asset_id, buyer_id, status, infringements, "
            "used, allowed, last_source, reviewer, opened_at, last_reported_at, tenant) "
            "VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, NULL, ?, ?, ?) "
            "ON CONFLICT (investigation_id) DO UPDATE SET infringements = {compliance_alerts}.infringements + 1, "
            # The same rule as the aggregate's: reports may arrive out of order, keep the worst one.
            "allowed = CASE WHEN excluded.used >= {compliance_alerts}.used THEN excluded.allowed "
            "ELSE {compliance_alerts}.allowed END, "
            "used = CASE WHEN excluded.used >= {compliance_alerts}.used THEN excluded.used "
            "ELSE {compliance_alerts}.used END, "
            "last_source = excluded.last_source, last_reported_at = excluded.last_reported_at",
            (
                envelope.aggregate_id, event.license_id, event.asset_id, event.buyer_id, InvestigationStatus.OPEN.value,
                event.used, event.allowed, event.source, at, at, envelope.tenant or "",
            ),
        )  # fmt: skip

    @handles
    def review_requested(self, event: ReviewRequested, envelope: Envelope) -> None:
        """Show the investigation as under review by its reviewer."""
        self.execute(
            "UPDATE {compliance_alerts} SET status = ?, reviewer = ? WHERE investigation_id = ?",
            (InvestigationStatus.UNDER_REVIEW.value, event.reviewer, envelope.aggregate_id),
        )

    @handles
    def closed(self, event: InvestigationClosed, envelope: Envelope) -> None:
        """A closed investigation is no alert any more (a new infringement brings it back)."""
        self.execute("DELETE FROM {compliance_alerts} WHERE investigation_id = ?", (envelope.aggregate_id,))


async def open_alerts(store: Store, limit: int = 100, tenant: str | None = None) -> list[Alert]:
    """The open investigations in the feed, newest first, at most ``limit``; only ``tenant``'s when given."""
    where, params = ("WHERE tenant = ? ", (tenant, limit)) if tenant is not None else ("", (limit,))
    rows = await store.fetch(
        "SELECT investigation_id, license_id, asset_id, buyer_id, status, infringements, used, allowed, last_source, "
        f"reviewer, opened_at, last_reported_at FROM {ALERTS_TABLE} {where}"
        "ORDER BY opened_at DESC, investigation_id LIMIT ?",
        params,
    )
    return [
        Alert(
            row[0], row[1], row[2], row[3], row[4], int(row[5]), int(row[6]), int(row[7]), row[8], row[9],
            datetime.fromisoformat(row[10]), datetime.fromisoformat(row[11]),
        )
        for row in rows
    ]  # fmt: skip


def _iso(moment: datetime) -> str:
    # Fixed width (always microseconds, always UTC) so the text sorts as the time does.
    return moment.astimezone(UTC).isoformat(timespec="microseconds")
