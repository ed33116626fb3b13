"""Reconciliation: compare, per business key, what should have happened with what did, and repair what is safe — audited.

A :class:`Reconciler` runs *checks*. Each check compares two adjacent stages of a flow and reports
:class:`Finding` s, per partition (business) key:

    source of truth → outbox        an application's check (a source change with no event)
    outbox → broker → each inbox    :class:`DeliveryCheck`: delivered but not applied by consumer X;
                                    parked outbox rows and dead letters (stuck work)
    broker copies                   :class:`BrokerCopiesCheck` (the ``local`` broker can say): a message
                                    stored more often than it was published (inboxes absorb it)
    inbox → read model              an application's check (row missing or different)

A finding may carry a repair. Repairs are the safe ones only: republish (``Outbox.replay``) every
delivered message of the key from the first one a consumer missed, in outbox order, so per-key
order holds and inboxes skip what was applied; release parked rows; ask the consumer to replay a
dead letter; and whatever an application's check offers (re-emit a missing event from the
source, rewrite a read-model row from its aggregate). Every repair is written to
``tidings_reconcile_audit`` (when, which command line, what, the outcome) and rate-limited: at
most ``limit`` per run, ``per_second`` paced, and a (check, key, action) repaired within
``cooldown`` seconds is skipped, so a reconcile run from cron cannot repair in a loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from tidings.runtime.dead_letters import DeadLetters
from tidings.store.base import Store
from tidings.store.outbox import Outbox

__all__ = ["AUDIT_TABLE", "BrokerCopiesCheck", "Check", "DeliveryCheck", "Finding", "Reconciler", "Repair", "Report"]

AUDIT_TABLE = "tidings_reconcile_audit"
_AUDIT_DDL = (
    f"CREATE TABLE IF NOT EXISTS {AUDIT_TABLE} (at TEXT NOT NULL, command_line TEXT NOT NULL, checker TEXT NOT NULL, "
    "kind TEXT NOT NULL, partition_key TEXT NOT NULL, action TEXT NOT NULL, outcome TEXT NOT NULL, detail TEXT NOT NULL)"
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One discrepancy: what kind, for which key, between which stages, and the repair that would fix it (if any)."""

    check: str
    #: "missing_event" | "not_applied" | "read_model_differs" | "duplicate" | "stuck"
    kind: str
    key: str
    #: The stages compared, e.g. "outbox → shipping.order-acceptances".
    where: str
    detail: str
    event_id: str | None = None
    correlation_id: str | None = None
    #: The repair's name, or None when nothing is safe to do automatically (the detail says what to do).
    repair: str | None = None
    #: What the repair needs (outbox ids, a dead letter id, a row): the check's own data.
    ref: Any = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("ref")
        return data


@dataclass(frozen=True, slots=True)
class Repair:
    """A repair attempted for a finding, as audited."""

    finding: Finding
    action: str
    outcome: str  # "done: …" | "skipped: …" | "failed: …"

    def as_dict(self) -> dict[str, Any]:
        return {"finding": self.finding.as_dict(), "action": self.action, "outcome": self.outcome}


class Check(Protocol):
    """One comparison of two stages; ``repair`` applies a finding's repair and says what it did."""

    name: str

    async def find(self, store: Store) -> list[Finding]: ...

    async def repair(self, store: Store, finding: Finding) -> str: ...


@dataclass(slots=True)
class Report:
    """What a run found, and (with repairs) what it did."""

    findings: list[Finding]
    repairs: list[Repair] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for finding in self.findings:
            counts[finding.kind] = counts.get(finding.kind, 0) + 1
        return counts

    def as_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts(),
            "findings": [f.as_dict() for f in self.findings],
            "repairs": [r.as_dict() for r in self.repairs],
        }

    def text(self) -> str:
        """A readable report: one line per finding, grouped by key, then the repairs."""
        if not self.findings:
            return "reconcile: nothing to report — every stage agrees"
        lines = [f"reconcile: {len(self.findings)} finding(s): " + ", ".join(f"{k} {n}" for k, n in sorted(self.counts().items()))]
        for key in sorted({f.key for f in self.findings}):
            lines.append(f"  {key}")
            for f in (f for f in self.findings if f.key == key):
                fix = f"  [repair: {f.repair}]" if f.repair else "  [no automatic repair]"
                lines.append(f"    {f.kind:<19} {f.where}: {f.detail}{fix}")
        for r in self.repairs:
            lines.append(f"  {r.action} {r.finding.key} ({r.finding.kind}): {r.outcome}")
        return "\n".join(lines)


class Reconciler:
    """Runs checks over one store, and applies their repairs with an audit trail and a rate limit."""

    def __init__(self, store: Store, checks: Sequence[Check]) -> None:
        self.store = store
        self.checks = list(checks)
        self._by_name = {check.name: check for check in self.checks}

    async def find(self) -> Report:
        """Every check's findings (nothing is changed)."""
        findings: list[Finding] = []
        for check in self.checks:
            findings.extend(await check.find(self.store))
        return Report(findings)

    async def repair(
        self,
        report: Report,
        *,
        command_line: str,
        limit: int = 100,
        per_second: float = 20.0,
        cooldown: float = 60.0,
    ) -> Report:
        """Apply the repairs of ``report``'s findings (at most ``limit``, paced), each audited; the report with them."""
        await self._ensure_audit()
        since = (datetime.now(UTC) - timedelta(seconds=cooldown)).isoformat()
        recent = {
            (checker, key, action)
            for checker, key, action in await self.store.fetch(
                f"SELECT checker, partition_key, action FROM {AUDIT_TABLE} WHERE at >= ? AND outcome LIKE 'done%'", (since,)
            )
        }
        done = 0
        for finding in report.findings:
            if finding.repair is None:
                continue
            action = finding.repair
            if (finding.check, finding.key, action) in recent:
                outcome = f"skipped: repaired within the last {cooldown:g} s (cooldown); look again later"
            elif done >= limit:
                outcome = f"skipped: limit of {limit} repairs per run reached; run again"
            else:
                try:
                    outcome = "done: " + await self._by_name[finding.check].repair(self.store, finding)
                    recent.add((finding.check, finding.key, action))
                except Exception as exc:  # one failed repair is reported and audited; the others still run
                    outcome = f"failed: {type(exc).__name__}: {exc}"
                done += 1
                if per_second > 0:
                    await asyncio.sleep(1 / per_second)
            report.repairs.append(Repair(finding, action, outcome))
            await self.store.run(
                f"INSERT INTO {AUDIT_TABLE} (at, command_line, checker, kind, partition_key, action, outcome, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (datetime.now(UTC).isoformat(), command_line, finding.check, finding.kind, finding.key, action, outcome,
                 json.dumps(finding.as_dict())),
            )  # fmt: skip
        return report

    async def audit(self, limit: int = 50) -> list[tuple[Any, ...]]:
        """The latest audited repairs, newest first."""
        await self._ensure_audit()
        return await self.store.fetch(
            f"SELECT at, command_line, checker, kind, partition_key, action, outcome FROM {AUDIT_TABLE} ORDER BY at DESC LIMIT ?",
            (limit,),
        )

    async def _ensure_audit(self) -> None:
        await self.store.run(_AUDIT_DDL)


class DeliveryCheck:
    """Outbox → broker → each consumer's inbox: delivered but not applied, parked rows, dead letters.

    ``consumers`` maps each consumer's name to the topics it reads. A delivered row younger than
    ``grace`` seconds may still be on its way and is not reported.
    """

    name = "delivery"

    def __init__(self, consumers: Mapping[str, Sequence[str]], *, grace: float = 30.0) -> None:
        self.consumers = {name: list(topics) for name, topics in consumers.items()}
        self.grace = grace

    async def find(self, store: Store) -> list[Finding]:
        findings: list[Finding] = []
        event_id = "o.event_id::text" if store.dialect == "postgresql" else "o.event_id"
        correlation = "o.envelope->>'correlation_id'" if store.dialect == "postgresql" else "json_extract(o.envelope, '$.correlation_id')"
        cutoff = datetime.now(UTC) - timedelta(seconds=self.grace)
        for consumer, topics in self.consumers.items():
            marks = ", ".join("?" for _ in topics)
            # Delivered, on one of its topics, and neither in its inbox nor among its dead letters.
            rows = await store.fetch(
                f"SELECT o.id, o.partition_key, {event_id}, o.event_type, {correlation} FROM tidings_outbox o "
                f"WHERE o.topic IN ({marks}) AND o.delivered_at IS NOT NULL AND o.delivered_at < ? "
                f"AND NOT EXISTS (SELECT 1 FROM tidings_inbox i WHERE i.consumer = ? AND i.event_id = {event_id}) "
                f"AND NOT EXISTS (SELECT 1 FROM tidings_dead_letters d WHERE d.consumer = ? AND d.event_id = {event_id}) "
                "ORDER BY o.id",
                (*topics, cutoff, consumer, consumer),
            )
            for row_id, key, event, event_type, corr in rows:
                findings.append(Finding(
                    self.name, "not_applied", str(key), f"outbox → {consumer}",
                    f"{event_type} {event} was delivered but {consumer} has not applied it (no inbox row, no dead letter)",
                    str(event), corr, "republish", (consumer, int(row_id), tuple(topics)),
                ))  # fmt: skip
        for row_id, key, event, event_type, error in await store.fetch(
            f"SELECT o.id, o.partition_key, {event_id}, o.event_type, o.last_error FROM tidings_outbox o "
            "WHERE o.parked_at IS NOT NULL AND o.delivered_at IS NULL ORDER BY o.id"
        ):
            findings.append(Finding(self.name, "stuck", str(key), "outbox (parked)", f"{event_type} {event} parked: {error}",
                                    str(event), None, "release", int(row_id)))  # fmt: skip
        for letter in await DeadLetters(store).list(statuses=("dead", "held"), limit=10_000):
            replayable = letter.status == "dead" and not letter.consumer.startswith("cdc:")
            what = "fix the source row, then it is captured again" if letter.consumer.startswith("cdc:") else "replay it once its cause is fixed"
            findings.append(Finding(
                self.name, "stuck", letter.key, f"{letter.consumer} ({letter.status})",
                f"{letter.event_type or '?'} {letter.event_id}: {letter.reason} — {letter.error.strip().splitlines()[-1] if letter.error.strip() else ''}"
                + ("" if replayable else f" ({what})"),
                letter.event_id, None, "replay dead letter" if replayable else None, letter.id,
            ))  # fmt: skip
        return findings

    async def repair(self, store: Store, finding: Finding) -> str:
        if finding.repair == "release":
            [result] = await Outbox(store).replay([finding.ref])
            return result.describe()
        if finding.repair == "replay dead letter":
            await DeadLetters(store).request_replay([finding.ref])
            return f"dead letter {finding.ref} marked replay_requested; the running consumer applies it"
        consumer, row_id, topics = finding.ref
        # Per-key order: every delivered row of the key from the first missed one on goes out again,
        # in outbox order; the consumer's inbox skips those it applied.
        marks = ", ".join("?" for _ in topics)
        rows = await store.fetch(
            f"SELECT id FROM tidings_outbox WHERE partition_key = ? AND topic IN ({marks}) AND id >= ? AND delivered_at IS NOT NULL ORDER BY id",
            (finding.key, *topics, row_id),
        )
        results = await Outbox(store).replay([int(r[0]) for r in rows])
        return "republished outbox rows " + ", ".join(str(r.id) for r in results if r.outcome == "replayed")


class BrokerCopiesCheck:
    """The ``local`` broker's log against the outbox: a message stored more often than it was published (or replayed)."""

    name = "broker-copies"

    async def find(self, store: Store) -> list[Finding]:
        event_id = "o.event_id::text" if store.dialect == "postgresql" else "o.event_id"
        rows = await store.fetch(
            f"SELECT l.key, l.event_id, count(*), max(o.replays) FROM tidings_local_log l "
            f"LEFT JOIN tidings_outbox o ON {event_id} = l.event_id GROUP BY l.key, l.event_id "
            "HAVING count(*) > COALESCE(max(o.replays), 0) + 1"
        )
        return [
            Finding(self.name, "duplicate", str(key), "outbox → broker",
                    f"message {event} is on the broker {n} times, published {int(replays or 0) + 1}; consumers' inboxes apply it once",
                    str(event))  # fmt: skip
            for key, event, n, replays in rows
        ]

    async def repair(self, store: Store, finding: Finding) -> str:
        raise NotImplementedError("a duplicate on the broker needs no repair: inboxes de-duplicate by event id")
