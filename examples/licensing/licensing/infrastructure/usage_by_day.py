"""The LicenseUsageByDay read model: purchases, usage reports, uses and violations per UTC day, from the journal.

One row per tenant and day ('' for events of no tenant), so a tenant's query sums only its own
activity; the platform's (no tenant) sums every tenant's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date

from examples.licensing.licensing.domain import LicensePurchased, UsageExceededLicense, UsageReported
from tidings.messaging import Envelope
from tidings.runtime import Projection, handles
from tidings.store import Store

__all__ = ["DayUsage", "LicenseUsageByDay", "UsageByDayQuery", "usage_by_day_query"]

TABLE = "licensing_usage_by_day"

# One upsert for every event type: each event adds its counts to its day's row. Consecutive
# writes of one template are sent as one batched statement by the projector (in waves per day on
# PostgreSQL), which is what keeps a rebuild over a long history fast.
_ADD = (
    "INSERT INTO {licensing_usage_by_day} (tenant, day, purchases, usage_reports, uses, violations) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, day) DO UPDATE SET "
    "purchases = {licensing_usage_by_day}.purchases + excluded.purchases, "
    "usage_reports = {licensing_usage_by_day}.usage_reports + excluded.usage_reports, "
    "uses = {licensing_usage_by_day}.uses + excluded.uses, "
    "violations = {licensing_usage_by_day}.violations + excluded.violations"
)


@dataclass(frozen=True, slots=True)
class DayUsage:
    """One UTC day of licensing activity: licenses bought, usage reports, uses reported, reports past an allowance."""

    day: date
    purchases: int
    usage_reports: int
    uses: int
    violations: int


def _day(envelope: Envelope) -> str:
    # The day the event happened (its envelope's occurred_at), in UTC so that every process and a
    # rebuild on another machine put an event on the same day. ISO text sorts like the date.
    return envelope.occurred_at.astimezone(UTC).date().isoformat()


class LicenseUsageByDay(Projection, name="licensing.LicenseUsageByDay"):
    """Analytics of Licensing: how many licenses were bought and how much they were used, day by day."""

    tables = {
        TABLE: {
            "sqlite": (
                "CREATE TABLE {licensing_usage_by_day} (tenant TEXT NOT NULL, "
                "day TEXT NOT NULL, purchases INTEGER NOT NULL, usage_reports INTEGER NOT NULL, "
                "uses INTEGER NOT NULL, violations INTEGER NOT NULL, PRIMARY KEY (tenant, day))"
            ),
            "postgresql": (
                "CREATE TABLE {licensing_usage_by_day} (tenant TEXT NOT NULL, "
                "day TEXT NOT NULL, purchases BIGINT NOT NULL, usage_reports BIGINT NOT NULL, "
                "uses BIGINT NOT NULL, violations BIGINT NOT NULL, PRIMARY KEY (tenant, day))"
            ),
        }
    }

    @handles
    def purchased(self, event: LicensePurchased, envelope: Envelope) -> None:
        """A license bought counts one purchase on its day."""
        self.execute(_ADD, (envelope.tenant or "", _day(envelope), 1, 0, 0, 0))

    @handles
    def usage_reported(self, event: UsageReported, envelope: Envelope) -> None:
        """A usage report counts one report and its uses on its day."""
        self.execute(_ADD, (envelope.tenant or "", _day(envelope), 0, 1, event.uses, 0))

    @handles
    def usage_exceeded(self, event: UsageExceededLicense, envelope: Envelope) -> None:
        """A report that left a license past its allowance counts one violation on its day."""
        self.execute(_ADD, (envelope.tenant or "", _day(envelope), 0, 0, 0, 1))


#: ``await usage_by_day(start=None, end=None, tenant=None)``: the days from ``start`` to ``end`` (inclusive), oldest first.
UsageByDayQuery = Callable[..., Awaitable[list[DayUsage]]]


def usage_by_day_query(store: Store, projection: LicenseUsageByDay) -> UsageByDayQuery:
    """The read query of ``projection`` on ``store``: days with activity between two dates, oldest first."""

    async def usage_by_day(start: date | None = None, end: date | None = None, tenant: str | None = None) -> list[DayUsage]:
        table = projection.table(TABLE)  # the live table (a rebuild swaps its result in under this name)
        params: tuple[str, ...] = (start.isoformat() if start else "", end.isoformat() if end else "9999-12-31")
        only_tenant = ""
        if tenant is not None:
            only_tenant, params = " AND tenant = ?", (*params, tenant)
        sql = (
            "SELECT day, sum(purchases), sum(usage_reports), sum(uses), sum(violations) "
            f"FROM {table} WHERE day >= ? AND day <= ?{only_tenant} GROUP BY day ORDER BY day"
        )
        rows = await store.fetch(sql, params)
        return [DayUsage(date.fromisoformat(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows]

    return usage_by_day
