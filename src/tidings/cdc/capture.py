"""Change data capture as a bridge: row changes of a legacy table → translators (the ACL) → integration events in the outbox.

A :class:`ChangeCapture` holds the anti-corruption translators, one per captured table. A
:class:`CdcRunner` reads whole source transactions from the slot, translates every change of one,
and commits its integration events to the outbox TOGETHER WITH the checkpoint (the transaction's
end LSN) and any dead letters, in one store transaction (the whole transactions of one read go
together); only then is the slot advanced. On restart
a transaction at or below the checkpoint is skipped, so the slot lagging after a crash means
re-reading, never a duplicate and never a gap (docs/decisions/0021).
"""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tidings.app.outgoing import outbox_entry
from tidings.cdc.source import RowChange, SlotReader, SourceTransaction
from tidings.domain.errors import TidingsError
from tidings.messaging.contracts import IntegrationEvent, partition_key_of, topic_of
from tidings.messaging.envelope import MessageContext
from tidings.store.base import Store
from tidings.store.errors import is_transient
from tidings.store.records import Changes, OutboxEntry

__all__ = ["CdcCheckpoint", "CdcRunner", "ChangeCapture", "Drop", "Publish", "UnreadableRow"]

log = logging.getLogger("tidings.cdc")

#: Event ids of captured changes are UUIDv5 in this namespace, from (table, key, commit LSN, position):
#: a re-read transaction yields the same ids, so consumers' inboxes de-duplicate it.
CDC_NAMESPACE = uuid.UUID("6f1d8a52-3c7e-5b0e-9d4a-7c2f1e0b9a11")


class UnreadableRow(TidingsError):
    """A translator cannot read a row (a garbage code, an unparsable amount): the change is dead-lettered with this."""

    def __init__(self, column: str, reason: str) -> None:
        super().__init__(f"column {column!r}: {reason}")
        self.column = column
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Drop:
    """A translator's answer for a change that is no business fact: nothing is published; counted with ``reason``."""

    reason: str


@dataclass(frozen=True, slots=True)
class Publish:
    """An integration event to publish for a change, with its partition key (default: the row's key) and topic."""

    event: IntegrationEvent
    key: str | None = None
    topic: str | None = None


Translation = IntegrationEvent | Publish | Drop
Translator = Callable[[RowChange], Iterable[Translation] | Translation | None]


@dataclass(frozen=True, slots=True)
class CdcCheckpoint:
    """What the runner committed last for one slot, and its running counts."""

    slot: str
    lsn: int
    commit_time: str | None
    translated: int
    dropped: int
    dead_lettered: int
    updated_at: Any = None


class ChangeCapture:
    """The anti-corruption layer of one legacy source: ``@capture.translator("legacy_orders")`` per table."""

    def __init__(self, source: str, *, tenant: str | None = None, correlation: Callable[[RowChange], str] | None = None) -> None:
        #: The ``source`` written in every envelope (the bounded context the events speak for).
        self.source = source
        self.tenant = tenant
        #: The correlation id of a change's events and dead letters, e.g. ``lambda c: f"order:{c.key}"`` so
        #: ``tidings trace order:o1`` finds the flow whichever system produced it; default: one per row.
        self.correlation = correlation or _row_correlation
        self.translators: dict[str, Translator] = {}

    def translator(self, table: str) -> Callable[[Translator], Translator]:
        """Register the function that turns a change of ``table`` (``schema.table`` or ``table``) into integration events."""
        qualified = table if "." in table else f"public.{table}"

        def register(fn: Translator) -> Translator:
            if qualified in self.translators:
                raise ValueError(f"table {qualified} already has a translator ({self.translators[qualified].__name__})")
            self.translators[qualified] = fn
            return fn

        return register

    @property
    def tables(self) -> list[str]:
        return sorted(self.translators)


@dataclass(slots=True)
class _Outcome:
    entries: list[OutboxEntry]
    dead: list[tuple[RowChange, str, str, str]]  # change, reason, error, traceback
    dropped: int


class CdcRunner:
    """Reads a slot and commits translated events with their checkpoint; run it as one process per slot."""

    def __init__(
        self,
        store: Store,
        reader: SlotReader,
        capture: ChangeCapture,
        *,
        max_changes: int = 5_000,
        poll_interval: float = 0.5,
        on_commit: Callable[[SourceTransaction], Any] | None = None,
    ) -> None:
        self.store = store
        self.reader = reader
        self.capture = capture
        self.max_changes = max_changes
        self.poll_interval = poll_interval
        self.on_commit = on_commit
        self.transactions = 0
        self.skipped = 0
        # This runner is its slot's only writer: the checkpoint is read once, then kept here.
        self._done: int | None = None
        self._idle = True

    async def checkpoint(self) -> CdcCheckpoint | None:
        """The last committed checkpoint of this runner's slot, or None before the first transaction."""
        rows = await self.store.fetch(
            "SELECT slot, lsn, commit_time, translated, dropped, dead_lettered, updated_at FROM tidings_cdc_checkpoints WHERE slot = ?",
            (self.reader.slot,),
        )
        return CdcCheckpoint(*rows[0]) if rows else None

    async def run_once(self) -> int:
        """Read what the slot holds now, commit it transaction by transaction, advance the slot; transactions committed.

        With nothing to read, the slot is advanced to the WAL position read before the peek (a
        heartbeat): an idle or filtered slot must not pin WAL, and nothing committed at or before
        that position is pending, so nothing is skipped.
        """
        # The WAL position is read before the peek only when the last read was empty: then an empty
        # peek up to it proves nothing committed before it is pending, and the slot may move there.
        upto = await self.reader.current_lsn() if self._idle else None
        found = await self.reader.peek(self.max_changes, upto_lsn=upto)
        if self._done is None:
            saved = await self.checkpoint()
            self._done = saved.lsn if saved else 0
        # Committed downstream before a crash that came before the slot's advance: skip those.
        fresh = [tx for tx in found if tx.end_lsn > self._done]
        self.skipped += len(found) - len(fresh)
        if fresh:
            await self._commit(fresh)
            if self.on_commit is not None:
                for tx in fresh:
                    self.on_commit(tx)
        if found:
            self._done = max(self._done, found[-1].end_lsn)
            await self.reader.advance(found[-1].end_lsn, checked=False)
        elif upto is not None:
            await self.reader.advance(upto)
        self._idle = not found
        self.transactions += len(fresh)
        return len(fresh)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Capture until ``stop`` is set: read, commit, advance; wait ``poll_interval`` when the slot is empty."""
        stop = stop or asyncio.Event()
        log.info("cdc %s: capturing %s", self.reader.slot, ", ".join(self.capture.tables))
        failures = 0
        while not stop.is_set():
            try:
                captured = await self.run_once()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                # The source or the store went away (a restart, the network): say it once, start over
                # from the committed checkpoint on a new connection, with backoff. Nothing is lost: the
                # slot never moved past what was committed.
                failures += 1
                if failures == 1:
                    log.warning("cdc %s: database unavailable (%s: %s); retrying", self.reader.slot, type(exc).__name__, exc)
                await self.reader.close()
                self._done, self._idle = None, True
                captured = 0
                wait = min(5.0, 0.2 * 2 ** min(failures, 5))
            else:
                if failures:
                    log.info("cdc %s: recovered after %d failed attempt(s)", self.reader.slot, failures)
                failures = 0
                wait = self.poll_interval
            if captured == 0:
                try:
                    await asyncio.wait_for(stop.wait(), wait)
                except TimeoutError:
                    pass

    def translate(self, tx: SourceTransaction) -> _Outcome:
        """Every change of one source transaction through its table's translator (no I/O)."""
        outcome = _Outcome([], [], 0)
        context = MessageContext(tenant=self.capture.tenant)
        for change in tx.changes:
            translator = self.capture.translators.get(change.table)
            if translator is None:
                outcome.dropped += 1
                continue
            try:
                produced = translator(change)
                items = [] if produced is None else [produced] if isinstance(produced, (IntegrationEvent, Publish, Drop)) else list(produced)
                entries = []
                for n, item in enumerate(items):
                    if isinstance(item, Drop):
                        outcome.dropped += 1
                        continue
                    publish = item if isinstance(item, Publish) else Publish(item)
                    event = publish.event
                    _, entry = outbox_entry(
                        event,
                        topic=publish.topic or topic_of(type(event)),
                        key=publish.key or partition_key_of(event) or change.key,
                        source=self.capture.source,
                        context=MessageContext(
                            correlation_id=self.capture.correlation(change),
                            causation_id=_causation(change),
                            tenant=context.tenant,
                        ),
                        now=change.commit_time,
                        event_id=change_event_id(change, n),
                    )
                    entries.append(entry)
                outcome.entries.extend(entries)
                if not items:
                    outcome.dropped += 1
            except UnreadableRow as exc:
                outcome.dead.append((change, "unreadable row", str(exc), ""))
            except Exception as exc:  # a translator bug must not stop every other row: dead-letter it with its traceback
                outcome.dead.append((change, "translator failed", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        return outcome

    async def _commit(self, transactions: list[SourceTransaction]) -> None:
        """Whole source transactions, in commit order, with the last one's end LSN as checkpoint: one store transaction."""
        outcome = _Outcome([], [], 0)
        for tx in transactions:
            one = self.translate(tx)
            outcome.entries.extend(one.entries)
            outcome.dead.extend(one.dead)
            outcome.dropped += one.dropped
        tx = transactions[-1]
        slot = self.reader.slot
        async with self.store.transaction() as t:
            if outcome.entries:
                await t.commit(Changes(outbox=outcome.entries))
            for change, reason, error, trace in outcome.dead:
                await t.run(_DEAD_LETTER, (
                    f"cdc:{slot}", change.table, change.key, 0, change_event_id(change, 0), f"cdc.{change.operation}",
                    json.dumps({"table": change.table, "operation": change.operation, "xid": change.xid,
                                "commit_lsn": f"{change.commit_lsn:X}", "index": change.index}),
                    # An envelope of the change, so ``tidings trace`` finds the dead letter by its correlation id.
                    json.dumps({"event_id": change_event_id(change, 0), "event_type": f"cdc.{change.operation}",
                                "source": self.capture.source, "correlation_id": self.capture.correlation(change),
                                "causation_id": _causation(change), "tenant": self.capture.tenant,
                                "occurred_at": change.commit_time.isoformat()}),
                    json.dumps({"old": _plain(change.old), "new": _plain(change.new)}).encode(),
                    reason, error, trace,
                ))  # fmt: skip
                log.warning("cdc %s: %s %s of %s dead-lettered: %s", slot, change.operation, change.key, change.table, error)
            await t.run(_UPSERT, (slot, tx.end_lsn, tx.commit_time.isoformat(), len(outcome.entries), outcome.dropped, len(outcome.dead)))


def change_event_id(change: RowChange, n: int) -> str:
    """The event id of the ``n``-th event translated from ``change``: the same every time the change is read."""
    return str(uuid.uuid5(CDC_NAMESPACE, f"{change.table}|{change.key}|{change.commit_lsn}|{change.index}|{n}"))


def _row_correlation(change: RowChange) -> str:
    return str(uuid.uuid5(CDC_NAMESPACE, f"{change.table}|{change.key}"))


def _causation(change: RowChange) -> str:
    """The cause named in a captured change's envelopes: the legacy row change itself (table, key, commit LSN)."""
    return f"cdc:{change.table}:{change.key}@{change.commit_lsn:X}"


def _plain(row: Any) -> Any:
    return None if row is None else {k: (v if isinstance(v, (str, int, float, type(None))) else repr(v)) for k, v in row.items()}


_DEAD_LETTER = (
    "INSERT INTO tidings_dead_letters (consumer, topic, partition_key, partition, event_id, event_type, headers, envelope, "
    "payload, reason, error, traceback, attempts, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, 'dead')"
)
_UPSERT = (
    "INSERT INTO tidings_cdc_checkpoints (slot, lsn, commit_time, translated, dropped, dead_lettered) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (slot) DO UPDATE SET lsn = excluded.lsn, commit_time = excluded.commit_time, "
    "translated = tidings_cdc_checkpoints.translated + excluded.translated, "
    "dropped = tidings_cdc_checkpoints.dropped + excluded.dropped, "
    "dead_lettered = tidings_cdc_checkpoints.dead_lettered + excluded.dead_lettered, updated_at = CURRENT_TIMESTAMP"
)
