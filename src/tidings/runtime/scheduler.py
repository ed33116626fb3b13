"""Durable deadlines: the table sagas schedule into, and the Scheduler that fires what is due.

A deadline is a message a saga instance asked to receive later (``self.schedule(after, message)``).
It is written in the same transaction as the saga state that asked for it, so it exists if and only
if that state committed, and it survives any restart. Firing one is a transaction too: the row is
marked fired by a conditional UPDATE (``WHERE fired_at IS NULL AND cancelled_at IS NULL``) and the
message is delivered to the saga instance, whose new state, outbox rows and deadline changes commit
with the mark. Two schedulers racing for one row: on PostgreSQL the second UPDATE waits for the
first transaction and then matches nothing; on SQLite the write lock serialises them. Either way a
deadline fires once, and a crash before the commit leaves it pending to fire after the restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from tidings.messaging.envelope import utc_now
from tidings.runtime.backoff import Backoff
from tidings.store.base import Store
from tidings.store.errors import PermanentDatabaseError, classify, is_permanent, is_transient, is_unavailable

if TYPE_CHECKING:
    from tidings.runtime.sagas import SagaRunner

__all__ = [
    "DeadlineRow",
    "NewDeadline",
    "Scheduler",
    "cancel_deadlines",
    "due_deadlines",
    "insert_deadlines",
    "list_deadlines",
    "mark_fired",
    "next_due",
]

log = logging.getLogger("tidings.scheduler")

_COLUMNS = (
    "id, deadline_id, saga_type, saga_key, saga_id, message_type, schema_version, envelope, payload, due_at, "
    "created_at, attempts, next_attempt_at, last_error, fired_at, cancelled_at, cancel_reason, parked_at"
)
_PG_COLUMNS = (
    "id, deadline_id::text, saga_type, saga_key, saga_id::text, message_type, schema_version, envelope::text, "
    "payload::text, due_at, created_at, attempts, next_attempt_at, last_error, fired_at, cancelled_at, "
    "cancel_reason, parked_at"
)
_PENDING = "fired_at IS NULL AND cancelled_at IS NULL AND parked_at IS NULL"
_OPEN = "fired_at IS NULL AND cancelled_at IS NULL"


@dataclass(frozen=True, slots=True)
class NewDeadline:
    """A deadline to insert: which saga instance gets which message, and when."""

    deadline_id: str
    saga_type: str
    saga_key: str
    saga_id: str
    message_type: str
    schema_version: int
    envelope: bytes
    payload: bytes
    due_at: datetime
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DeadlineRow:
    """A deadline as stored, with its firing bookkeeping."""

    id: int
    deadline_id: str
    saga_type: str
    saga_key: str
    saga_id: str
    message_type: str
    schema_version: int
    envelope: bytes
    payload: bytes
    due_at: datetime
    created_at: datetime
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    fired_at: datetime | None
    cancelled_at: datetime | None
    cancel_reason: str | None
    parked_at: datetime | None

    @property
    def status(self) -> str:
        """``pending``, ``retrying``, ``fired``, ``cancelled`` or ``parked``."""
        if self.fired_at is not None:
            return "fired"
        if self.cancelled_at is not None:
            return "cancelled"
        if self.parked_at is not None:
            return "parked"
        return "retrying" if self.attempts else "pending"


# -- the table -------------------------------------------------------------------------------------


async def insert_deadlines(tx: Store, deadlines: Sequence[NewDeadline]) -> None:
    """Insert deadlines (inside the transaction that saves the saga which scheduled them)."""
    if not deadlines:
        return
    await tx.run_many(
        "INSERT INTO tidings_saga_deadlines (deadline_id, saga_type, saga_key, saga_id, message_type, schema_version, "
        "envelope, payload, due_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                d.deadline_id, d.saga_type, d.saga_key, d.saga_id, d.message_type, d.schema_version,
                d.envelope.decode(), d.payload.decode(), d.due_at, d.created_at,
            )
            for d in deadlines
        ],
    )  # fmt: skip


async def cancel_deadlines(
    tx: Store,
    saga_id: str,
    now: datetime,
    reason: str,
    *,
    message_type: str | None = None,
    deadline_id: str | None = None,
) -> int:
    """Cancel an instance's open deadlines (all, one message type, or one by id); returns how many."""
    sql = f"UPDATE tidings_saga_deadlines SET cancelled_at = ?, cancel_reason = ? WHERE saga_id = ? AND {_OPEN}"
    params: list[Any] = [now, reason[:500], saga_id]
    if message_type is not None:
        sql += " AND message_type = ?"
        params.append(message_type)
    if deadline_id is not None:
        sql += " AND deadline_id = ?"
        params.append(deadline_id)
    return await tx.run(sql, params)


async def due_deadlines(store: Store, now: datetime, limit: int) -> list[DeadlineRow]:
    """Pending deadlines due at ``now`` (and not waiting for a retry), earliest first."""
    rows = await store.fetch(
        f"SELECT {_columns(store)} FROM tidings_saga_deadlines WHERE {_PENDING} AND due_at <= ? "
        "AND (next_attempt_at IS NULL OR next_attempt_at <= ?) ORDER BY due_at, id LIMIT ?",
        (now, now, limit),
    )
    return [_row(r) for r in rows]


async def next_due(store: Store) -> datetime | None:
    """When the earliest pending deadline is due (or its retry), None if nothing is pending."""
    rows = await store.fetch(
        f"SELECT min(CASE WHEN next_attempt_at IS NOT NULL AND next_attempt_at > due_at THEN next_attempt_at "
        f"ELSE due_at END) FROM tidings_saga_deadlines WHERE {_PENDING}"
    )
    value = rows[0][0] if rows else None
    return _as_datetime(value) if value is not None else None


async def mark_fired(tx: Store, row_id: int, now: datetime) -> bool:
    """Claim a deadline for firing inside the firing transaction; False if it is no longer pending."""
    changed = await tx.run(f"UPDATE tidings_saga_deadlines SET fired_at = ? WHERE id = ? AND {_PENDING}", (now, row_id))
    return changed == 1


async def list_deadlines(
    store: Store, *, saga_type: str | None = None, saga_key: str | None = None, open_only: bool = True, limit: int = 100
) -> list[DeadlineRow]:
    """Deadlines for inspection, earliest due first: open ones (pending, retrying, parked) or all."""
    where, params = [], []
    if open_only:
        where.append(_OPEN)
    if saga_type is not None:
        where.append("saga_type = ?")
        params.append(saga_type)
    if saga_key is not None:
        where.append("saga_key = ?")
        params.append(saga_key)
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    rows = await store.fetch(
        f"SELECT {_columns(store)} FROM tidings_saga_deadlines {clause}ORDER BY due_at, id LIMIT ?", (*params, limit)
    )
    return [_row(r) for r in rows]


# -- the scheduler ---------------------------------------------------------------------------------


class Scheduler:
    """Fires due deadlines into their saga instances; run one or several (``tidings scheduler``, or as a task)."""

    def __init__(
        self,
        runner: SagaRunner,
        *,
        poll_interval: float = 1.0,
        batch_size: int = 100,
        max_attempts: int = 10,
        backoff: Backoff = Backoff(1.0, 300.0),
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.runner = runner
        self.store = runner.store
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.clock = clock
        self.fired = 0
        self._state = "starting"
        self._down_since = 0

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Fire deadlines as they fall due until ``stop`` is set (or the task is cancelled); survives database outages."""
        stop = stop or asyncio.Event()
        names = ", ".join(sorted(self.runner.sagas)) or "(none)"
        log.info("scheduler: running for %s (polling every %s s)", names, self.poll_interval)
        self._state = "running"
        try:
            while not stop.is_set():
                try:
                    fired = await self.fire_due()
                    if self._down_since:
                        self._down_since = 0
                        self._set_state("running")
                    if fired >= self.batch_size:
                        continue  # more may be due right now
                    await self._wait(stop)
                except Exception as exc:
                    if not is_transient(exc):
                        if classify(exc) is not None:
                            # A missing table, no privilege, a closed store: waiting would never end.
                            stopped = PermanentDatabaseError("scheduler", exc)
                            log.error("%s", stopped)
                            self._state = "stopped"
                            raise stopped from exc
                        raise
                    # The database went away (restart, network) or is busy: say it once, retry with backoff.
                    self._set_state("database unavailable", f"{type(exc).__name__}: {exc}", logging.WARNING)
                    self._down_since += 1
                    await _sleep_or_stop(stop, self.backoff.delay(self._down_since))
        finally:
            self._set_state("stopped")

    async def fire_due(self, now: datetime | None = None) -> int:
        """Fire every deadline due at ``now`` (default: the clock), one transaction each; returns how many fired.

        A deadline whose delivery fails is retried later with backoff, and parked with its error
        after ``max_attempts``; the others are not held up by it.
        """
        now = now or self.clock()
        fired = 0
        rows = await due_deadlines(self.store, now, self.batch_size)
        for row in rows:
            try:
                outcome = await self.runner.fire(row, now=now)
            except Exception as exc:
                if is_permanent(exc) or is_unavailable(exc):
                    raise  # the database, not this deadline: the loop waits or stops
                await self._failed(row, exc)
                continue
            if outcome is not None and outcome.status != "ignored":
                fired += 1
                log.debug("scheduler: fired %s for %s %s", row.message_type, row.saga_type, row.saga_key)
        self.fired += fired
        return fired

    async def _failed(self, row: DeadlineRow, exc: BaseException) -> None:
        attempts = row.attempts + 1
        error = f"{type(exc).__name__}: {exc}"[:2000]
        if attempts >= self.max_attempts:
            await self.store.run(
                "UPDATE tidings_saga_deadlines SET attempts = ?, last_error = ?, parked_at = ? WHERE id = ?",
                (attempts, error, self.clock(), row.id),
            )
            log.error(
                "scheduler: parked deadline %s (%s for %s %s) after %d attempts: %s",
                row.deadline_id, row.message_type, row.saga_type, row.saga_key, attempts, error,
            )  # fmt: skip
            return
        retry_at = self.clock() + timedelta(seconds=self.backoff.delay(attempts))
        await self.store.run(
            "UPDATE tidings_saga_deadlines SET attempts = ?, last_error = ?, next_attempt_at = ? WHERE id = ?",
            (attempts, error, retry_at, row.id),
        )
        log.warning(
            "scheduler: deadline %s (%s for %s %s) failed, attempt %d of %d, retrying at %s: %s",
            row.deadline_id, row.message_type, row.saga_type, row.saga_key, attempts, self.max_attempts,
            retry_at.isoformat(timespec="seconds"), error,
        )  # fmt: skip

    async def _wait(self, stop: asyncio.Event) -> None:
        """Sleep until the next deadline is due, a local saga schedules one, ``stop``, or the poll interval."""
        due = await next_due(self.store)
        seconds = self.poll_interval
        if due is not None:
            seconds = max(0.0, min(seconds, (due - self.clock()).total_seconds()))
        if seconds <= 0:
            return
        wake = self.runner.scheduled_signal()
        waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())}
        started = time.monotonic()
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
            wake.clear()
        log.debug("scheduler: woke after %.3f s", time.monotonic() - started)

    def _set_state(self, state: str, detail: str = "", level: int = logging.INFO) -> None:
        # State changes are logged once each, never per poll.
        if state == self._state:
            return
        if self._state == "database unavailable" and state == "running":
            log.info("scheduler: recovered (database available again)")
        else:
            log.log(level, "scheduler: %s%s", state, f" — {detail}" if detail else "")
        self._state = state


# -- helpers ---------------------------------------------------------------------------------------


def _columns(store: Store) -> str:
    return _PG_COLUMNS if store.dialect == "postgresql" else _COLUMNS


def _as_datetime(value: datetime | str) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _maybe_datetime(value: datetime | str | None) -> datetime | None:
    return None if value is None else _as_datetime(value)


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _row(row: tuple[Any, ...]) -> DeadlineRow:
    return DeadlineRow(
        id=int(row[0]),
        deadline_id=row[1],
        saga_type=row[2],
        saga_key=row[3],
        saga_id=row[4],
        message_type=row[5],
        schema_version=int(row[6]),
        envelope=_bytes(row[7]),
        payload=_bytes(row[8]),
        due_at=_as_datetime(row[9]),
        created_at=_as_datetime(row[10]),
        attempts=int(row[11]),
        next_attempt_at=_maybe_datetime(row[12]),
        last_error=row[13],
        fired_at=_maybe_datetime(row[14]),
        cancelled_at=_maybe_datetime(row[15]),
        cancel_reason=row[16],
        parked_at=_maybe_datetime(row[17]),
    )


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
