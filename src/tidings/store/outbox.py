"""The outbox as the relay sees it: claim ready rows, mark them delivered, retry, park, replay, prune.

Written once for both dialects over the store's ``fetch``/``run`` (``?`` placeholders); only
integers we produce ourselves are ever inlined into SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from tidings.messaging.envelope import utc_now
from tidings.store.base import Store
from tidings.store.records import OutboxRow

__all__ = ["Outbox", "OutboxStatus", "PartitionStatus", "Replay"]

_COLUMNS = (
    "id, event_id, partition, partition_key, topic, event_type, envelope, payload, attempts, created_at, "
    "delivered_at, parked_at, last_error"
)
_CAST_COLUMNS = (
    "id, event_id::text, partition, partition_key, topic, event_type, envelope::text, payload::text, attempts, "
    "created_at, delivered_at, parked_at, last_error"
)

# What the relay needs of a claimed row: the bookkeeping times are left out, since turning
# 2,000 timestamps per claim into datetimes cost the relay more than the claim's SQL did.
_CLAIM_COLUMNS = "id, event_id, partition, partition_key, topic, event_type, envelope, payload, attempts, replays"
_CAST_CLAIM_COLUMNS = (
    "id, event_id::text, partition, partition_key, topic, event_type, envelope::text, payload::text, attempts, replays"
)


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    """Undelivered rows of one partition and who relays it."""

    partition: int
    backlog: int
    parked: int
    retrying: int
    oldest_at: datetime | None
    owner: str | None


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    """What an operator asks first: how much is waiting, since when, and what is stuck."""

    backlog: int
    parked: int
    retrying: int
    oldest_age_s: float | None
    partitions: list[PartitionStatus] = field(default_factory=list)
    relays: list[tuple[str, str, float]] = field(default_factory=list)  # (relay id, partitions, heartbeat age s)


@dataclass(frozen=True, slots=True)
class Replay:
    """What ``Outbox.replay`` did to one row: replayed, released, pending or not found."""

    id: int
    outcome: Literal["replayed", "released", "pending", "not found"]
    event_id: str | None = None
    #: For a replayed row: the replay number it will be published with (1 for the first replay).
    replay: int = 0
    #: For a released row, the error that parked it; for a pending row waiting to retry, when and why.
    detail: str = ""

    def describe(self) -> str:
        """One line for an operator: the row, what happened, and what happens next."""
        if self.outcome == "replayed":
            return (
                f"row {self.id}: replayed — was delivered; the relay publishes event {self.event_id} again "
                f"(replay {self.replay}); consumers that applied it skip it, those that missed it apply it"
            )
        if self.outcome == "released":
            return f"row {self.id}: parked, released — the relay publishes event {self.event_id} now (it was parked: {self.detail})"
        if self.outcome == "pending":
            waiting = f" ({self.detail})" if self.detail else ""
            return f"row {self.id}: still pending — not delivered yet, the relay publishes it anyway{waiting}; nothing changed"
        return f"row {self.id}: not found — no outbox row has this id (delivered rows are pruned after the retention)"


class Outbox:
    """Relay-side operations on a store's outbox table."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._columns = _CAST_COLUMNS if store.dialect == "postgresql" else _COLUMNS
        self._claim_columns = _CAST_CLAIM_COLUMNS if store.dialect == "postgresql" else _CLAIM_COLUMNS

    async def claim(
        self, partitions: Sequence[int], limit: int, now: datetime | None = None, *, after: int = 0
    ) -> list[OutboxRow]:
        """Up to ``limit`` rows ready to publish from ``partitions``, oldest first.

        A row is ready when it is undelivered, not parked, due, and no earlier row of its key is
        held back (parked, or waiting for a retry): a key's rows leave in order or not at all,
        while other keys flow past a stuck one. ``after`` skips ids up to it: the relay claims the
        next batch while the previous one is still being published and marked.
        """
        if not partitions:
            return []
        rows = await self.store.fetch(
            f"SELECT {self._claim_columns} FROM tidings_outbox o "
            f"WHERE o.partition IN ({_ints(partitions)}) AND o.delivered_at IS NULL AND o.parked_at IS NULL "
            "AND o.id > ? AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= ?) "
            "AND NOT EXISTS (SELECT 1 FROM tidings_outbox h WHERE h.partition_key = o.partition_key "
            "AND h.id < o.id AND h.delivered_at IS NULL "
            "AND (h.parked_at IS NOT NULL OR h.next_attempt_at IS NOT NULL)) "
            "ORDER BY o.id LIMIT ?",
            (after, now or utc_now(), limit),
        )
        return [_claimed(r) for r in rows]

    async def mark_delivered(self, ids: Sequence[int], now: datetime | None = None) -> None:
        """Mark rows delivered, in one statement."""
        if ids:
            await self.store.run(
                f"UPDATE tidings_outbox SET delivered_at = ? WHERE id IN ({_ints(ids)})", (now or utc_now(),)
            )

    async def mark_failed(self, failures: Sequence[tuple[int, str, datetime]]) -> None:
        """Record a failed attempt of each row ``(id, error, next attempt at)``; the row waits until then."""
        for row_id, error, next_at in failures:
            await self.store.run(
                "UPDATE tidings_outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? WHERE id = ?",
                (error[:2000], next_at, row_id),
            )

    async def park(self, failures: Sequence[tuple[int, str]], now: datetime | None = None) -> None:
        """Park rows ``(id, error)`` that will not succeed by retrying; they hold their key until replayed."""
        for row_id, error in failures:
            await self.store.run(
                "UPDATE tidings_outbox SET attempts = attempts + 1, last_error = ?, parked_at = ? WHERE id = ?",
                (error[:2000], now or utc_now(), row_id),
            )

    async def replay(self, ids: Sequence[int] = (), *, parked: bool = False) -> list[Replay]:
        """Publish rows again: delivered ones by id, parked ones by id or all (``parked=True``); one Replay per row.

        A delivered row is *replayed*: it becomes undelivered with ``replays`` one higher, so
        de-duplicating brokers (local, NATS) store it again, under the same event id; consumers
        that applied it skip it through their inbox, consumers that missed it apply it. A parked
        row is *released*: it is published as it would have been, and its key flows again. A
        row not yet delivered is left alone (*pending*: the relay publishes it anyway); an id
        with no row (pruned after delivery, or never written) is *not found*.
        """
        if not parked and not ids:
            return []
        where = "parked_at IS NOT NULL AND delivered_at IS NULL" if parked else f"id IN ({_ints(ids)})"
        event_id = "event_id::text" if self.store.dialect == "postgresql" else "event_id"
        done: dict[int, Replay] = {}
        # Each row's outcome comes from the UPDATE that changed it, so a relay marking or an
        # operator replaying at the same time cannot make this report something that did not happen.
        async with self.store.transaction() as tx:
            if not parked:
                for row_id, event, replays in await tx.fetch(
                    "UPDATE tidings_outbox SET delivered_at = NULL, parked_at = NULL, next_attempt_at = NULL, attempts = 0, "
                    f"replays = replays + 1 WHERE {where} AND delivered_at IS NOT NULL RETURNING id, {event_id}, replays"
                ):
                    done[row_id] = Replay(row_id, "replayed", event, replay=replays)
            for row_id, event, error in await tx.fetch(
                "UPDATE tidings_outbox SET parked_at = NULL, next_attempt_at = NULL, attempts = 0 "
                f"WHERE {where} AND parked_at IS NOT NULL AND delivered_at IS NULL RETURNING id, {event_id}, last_error"
            ):
                done[row_id] = Replay(row_id, "released", event, detail=error or "")
            rest = [row_id for row_id in ids if row_id not in done]
            if rest:
                for row_id, event, next_at, error in await tx.fetch(
                    f"SELECT id, {event_id}, next_attempt_at, last_error FROM tidings_outbox WHERE id IN ({_ints(rest)})"
                ):
                    retry = f"retrying at {_as_datetime(next_at).isoformat(timespec='seconds')} after: {error}" if next_at else ""
                    done[row_id] = Replay(row_id, "pending", event, detail=retry)
        if parked:
            return [done[row_id] for row_id in sorted(done)]
        return [done.get(row_id) or Replay(int(row_id), "not found") for row_id in dict.fromkeys(ids)]

    async def prune(self, older_than: timedelta, *, batch: int = 5000, now: datetime | None = None) -> int:
        """Delete delivered rows older than ``older_than``, ``batch`` rows per statement; returns how many."""
        cutoff = (now or utc_now()) - older_than
        total = 0
        while True:
            deleted = await self.store.run(
                "DELETE FROM tidings_outbox WHERE id IN (SELECT id FROM tidings_outbox "
                "WHERE delivered_at IS NOT NULL AND delivered_at < ? ORDER BY delivered_at LIMIT ?)",
                (cutoff, batch),
            )
            total += deleted
            if deleted < batch:
                return total

    async def status(self, now: datetime | None = None) -> OutboxStatus:
        """Backlog, parked and retrying counts, oldest undelivered row's age, per partition and its owner."""
        now = now or utc_now()
        rows = await self.store.fetch(
            "SELECT partition, count(*), "
            "sum(CASE WHEN parked_at IS NOT NULL THEN 1 ELSE 0 END), "
            "sum(CASE WHEN parked_at IS NULL AND next_attempt_at IS NOT NULL THEN 1 ELSE 0 END), "
            "min(created_at) FROM tidings_outbox WHERE delivered_at IS NULL GROUP BY partition ORDER BY partition"
        )
        relays = await self.store.fetch("SELECT relay_id, partitions, heartbeat_at FROM tidings_relays ORDER BY relay_id")
        owners: dict[int, str] = {}
        relay_list = []
        for relay_id, parts, heartbeat in relays:
            for part in filter(None, parts.split(",")):
                owners[int(part)] = relay_id
            relay_list.append((relay_id, parts, (now - _as_datetime(heartbeat)).total_seconds()))
        partitions = [
            PartitionStatus(p, int(n), int(parked or 0), int(retrying or 0), _as_datetime(oldest) if oldest else None, owners.get(p))
            for p, n, parked, retrying, oldest in rows
        ]
        oldest_at = min((p.oldest_at for p in partitions if p.oldest_at), default=None)
        return OutboxStatus(
            backlog=sum(p.backlog for p in partitions),
            parked=sum(p.parked for p in partitions),
            retrying=sum(p.retrying for p in partitions),
            oldest_age_s=(now - oldest_at).total_seconds() if oldest_at else None,
            partitions=partitions,
            relays=relay_list,
        )


def _ints(values: Sequence[int]) -> str:
    # Inlined, not bound: an IN list of our own integers, safe and the same SQL on both dialects.
    return ",".join(str(int(v)) for v in values)


def _as_datetime(value: datetime | str) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _text(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _claimed(row: tuple) -> OutboxRow:  # type: ignore[type-arg]
    envelope, payload = row[6], row[7]
    return OutboxRow(
        row[0], row[1], row[2], row[3], row[4], row[5],
        envelope if type(envelope) is bytes else envelope.encode(),
        payload if type(payload) is bytes else payload.encode(),
        row[8],
        replays=row[9],
    )


def _row(row: tuple) -> OutboxRow:  # type: ignore[type-arg]
    return OutboxRow(
        id=row[0],
        event_id=row[1],
        partition=row[2],
        partition_key=row[3],
        topic=row[4],
        event_type=row[5],
        envelope=_text(row[6]),
        payload=_text(row[7]),
        attempts=row[8],
        created_at=_as_datetime(row[9]),
        delivered_at=_as_datetime(row[10]) if row[10] else None,
        parked_at=_as_datetime(row[11]) if row[11] else None,
        last_error=row[12],
    )
