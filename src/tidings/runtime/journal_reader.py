"""Reading the journal in position order without ever passing an event that commits later.

PostgreSQL allocates a journal position when the row is inserted, not when its transaction
commits. A reader can therefore see position 12 while 11 is still being written: if it moved its
checkpoint to 12, event 11 would be skipped forever once it commits. Positions of rolled-back
transactions (or failed inserts) are never filled at all, so "wait until the hole fills" would
stall forever. The rule used here (docs/decisions/0009-projection-gaps.md):

1. Read the rows after the checkpoint; keep the contiguous prefix.
2. At a hole ``h`` below a visible row ``p``: whoever allocated ``h`` did so before ``p`` was
   allocated (identity values are handed out in increasing order), so it is a transaction that
   was writing the journal when we read. Every such transaction holds ROW EXCLUSIVE on the
   journal table from its INSERT until it ends. Right after the read we note which transactions
   hold that lock.
3. Do not pass ``h`` until every one of them has ended. Then read again: if ``h`` is there it
   committed and is applied in order; if not, it was rolled back and is skipped — no transaction
   can fill it any more. The same holds for every other hole below ``p``.

Why the lock and not ``pg_snapshot_xip(pg_current_snapshot())``: a transaction gets an xid at its
first row write, but ``nextval`` (which hands out the position) runs *before* that write and, for
31 of every 32 values, assigns no xid. A writer caught between the two is in no snapshot's xip
list, so the snapshot rule could skip its event; it does hold the table lock (taken when its
INSERT was parsed). The lock also limits the wait to writers of *this* journal, where xip lists
every writing transaction of the whole cluster.

The checkpoint thus never passes an event that commits later, and the wait is bounded by the
longest transaction that was writing the journal when the hole was seen.

SQLite needs none of this: a write transaction holds the database's single write lock from its
first insert to its commit, so once position ``p`` is visible every earlier writer has finished,
and a hole below a visible row is final.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from tidings.store.base import Store

__all__ = ["JournalBatch", "JournalReader", "JournalRow"]


class JournalRow(msgspec.Struct, frozen=True, gc=False):
    """One journal entry of a type the reader was asked for, as stored (the reader of the event decodes it).

    Untracked by the garbage collector (it holds only strings and ints): a rebuild keeps thousands
    alive at once, and tracked objects make every collection slower.
    """

    position: int
    event_type: str
    schema_version: int
    #: The envelope's JSON.
    envelope: str
    #: The payload's JSON.
    payload: str


@dataclass(slots=True)
class JournalBatch:
    """Rows safe to apply now, and the position a checkpoint may move to after applying them."""

    rows: list[JournalRow] = field(default_factory=list)
    #: The position the read started after: a checkpoint must still be here when the batch is applied.
    after: int = 0
    #: Every position up to here is applied-or-final once ``rows`` are applied (skipped types, final holes).
    upto: int = 0
    #: A hole right after ``upto`` belongs to a transaction still in flight: read again shortly.
    waiting: bool = False
    #: Read again at once: the read was cut short (by its limit, or before a hole to look into).
    more: bool = False


@dataclass(slots=True)
class _Hole:
    """A hole below ``bound``, and the journal writers that were in flight when it was seen."""

    bound: int
    writers: list[str]
    seen_at: float


_SELECT = (
    "SELECT position, event_type, schema_version, {envelope}, {payload} "
    "FROM tidings_journal WHERE position > ? ORDER BY position LIMIT ?"
)
# Transactions of this database holding ROW EXCLUSIVE on this schema's journal: every one that has
# inserted (or is inserting) a journal row and has not ended. Relation OIDs repeat across
# databases, hence the database filter.
_JOURNAL_WRITERS = (
    "SELECT DISTINCT virtualtransaction FROM pg_locks WHERE locktype = 'relation' "
    "AND relation = 'tidings_journal'::regclass "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND mode = 'RowExclusiveLock' AND granted AND pid IS DISTINCT FROM pg_backend_pid()"
)
_STILL_WRITING = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'relation' AND relation = 'tidings_journal'::regclass "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND virtualtransaction = ANY(?)"
)


class JournalReader:
    """Reads journal rows after a position, in position order, never past a hole that may still fill."""

    def __init__(self, store: Store, *, event_types: Collection[str] | None = None, batch_size: int = 1000) -> None:
        self.store = store
        self.batch_size = batch_size
        self.postgres = store.dialect == "postgresql"
        # One row per event. (Aggregating a batch into one json_agg document halves the client's
        # decoding but costs the server more than it saves: slower whenever the host is busy.)
        text = "::text" if self.postgres else ""
        if event_types is None:
            columns, self._params = (f"envelope{text}", f"payload{text}"), ()
        else:
            names = sorted(event_types)
            marks = ", ".join("?" * len(names)) or "NULL"
            columns = tuple(f"CASE WHEN event_type IN ({marks}) THEN {c}{text} END" for c in ("envelope", "payload"))
            # The IN list appears twice (envelope, payload): its parameters are given twice.
            self._params = (*names, *names)
        self._select = _SELECT.format(envelope=columns[0], payload=columns[1])
        #: Every missing position below this is final (rolled back): passed over without waiting.
        self._final_below = 0
        self._hole: _Hole | None = None

    @property
    def waiting_since(self) -> float | None:
        """``time.monotonic()`` when the hole being waited for was first seen, or None."""
        return self._hole.seen_at if self._hole is not None else None

    async def read(self, after: int, limit: int | None = None) -> JournalBatch:
        """The rows after ``after`` that are safe to apply now (see the module's docstring)."""
        limit = limit or self.batch_size
        while True:
            raw = await self._fetch(after, limit)
            batch = JournalBatch(after=after, upto=after, more=len(raw) == limit)
            blocked_at: int | None = None
            if raw and raw[-1][0] - after == len(raw):
                # No hole (the common case): every row is the next position.
                batch.rows = [JournalRow(*row) for row in raw if row[3] is not None]
                batch.upto = raw[-1][0]
            else:
                expected = after + 1
                for position, event_type, version, envelope, payload in raw:
                    if position != expected and self.postgres and position > self._final_below:
                        blocked_at = position
                        break
                    if envelope is not None:
                        batch.rows.append(JournalRow(position, event_type, version, envelope, payload))
                    batch.upto, expected = position, position + 1
            if blocked_at is None:
                return batch
            if self._hole is None or blocked_at > self._hole.bound:
                # A hole the writers noted so far cannot explain: note who is writing now. Noted
                # after the read, so it includes every allocator of a position below blocked_at
                # that had not ended by then.
                self._hole = _Hole(blocked_at, await self._journal_writers(), time.monotonic())
            if batch.upto > after:
                batch.more = True  # apply what is safe first; the hole is looked into on the next read
                return batch
            if await self._still_writing(self._hole.writers):
                batch.waiting, batch.more = True, False
                return batch
            # Every writer that could hold a position below the bound has ended: whatever is still
            # missing below it was rolled back. Read again (a new snapshot) and pass over it.
            self._final_below = max(self._final_below, self._hole.bound)
            self._hole = None

    async def _fetch(self, after: int, limit: int) -> list[tuple[int, str, int, str | None, str | None]]:
        return await self.store.fetch(self._select, (*self._params, after, limit))

    async def _journal_writers(self) -> list[str]:
        return [row[0] for row in await self.store.fetch(_JOURNAL_WRITERS)]

    async def _still_writing(self, writers: list[str]) -> bool:
        if not writers:
            return False
        rows = await self.store.fetch(_STILL_WRITING, (writers,))
        return bool(rows[0][0])


async def journal_head(store: Store) -> tuple[int, datetime | None]:
    """The highest journal position (0 if empty) and when its event occurred."""
    rows = await store.fetch("SELECT position, occurred_at FROM tidings_journal ORDER BY position DESC LIMIT 1")
    if not rows:
        return 0, None
    return int(rows[0][0]), _as_datetime(rows[0][1])


async def first_after(store: Store, position: int) -> tuple[int, datetime] | None:
    """The first journal entry after ``position``: its position and when it occurred."""
    rows = await store.fetch(
        "SELECT position, occurred_at FROM tidings_journal WHERE position > ? ORDER BY position LIMIT 1", (position,)
    )
    if not rows:
        return None
    occurred = _as_datetime(rows[0][1])
    assert occurred is not None
    return int(rows[0][0]), occurred


def _as_datetime(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)
