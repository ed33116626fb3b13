"""The one interface every store backend implements; a backend is done when the conformance suite passes."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, runtime_checkable

from tidings.store.records import Changes, OutboxRow, SnapshotRow, StateRow, StoredEvent

__all__ = ["Store"]


@runtime_checkable
class Store(Protocol):
    """Durable home of aggregates, the journal, the outbox, inboxes and checkpoints."""

    url: str
    dialect: str

    def pinned(self) -> AbstractAsyncContextManager[None]:
        """Within the block, this task's statements share one connection (the application pins one per command)."""
        ...

    def transaction(self, *, lazy: bool = False) -> AbstractAsyncContextManager[Store]:
        """Within the block, this task's statements and commits are one transaction: all or nothing.

        Used where an effect must commit with a record of it (a consumer's inbox row, a
        projection's checkpoint). Nested blocks and commits inside become savepoints.
        ``lazy=True`` (a unit of work's) begins the transaction only when a statement other than
        the store's own reads and ``commit`` runs, so a command that runs no SQL of its own keeps
        its one-statement commit; whatever does run joins it (decision 0014).
        """
        ...

    async def connection(self) -> Any:
        """The driver connection (sqlite3 or psycopg) of this task's open transaction; NoTransaction outside one."""
        ...

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one statement written with ``?`` placeholders, whatever the dialect (empty if it returns none)."""
        ...

    async def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute one ``?``-placeholder statement in its own transaction (or this task's open one); the rows it changed."""
        ...

    async def run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Execute one ``?``-placeholder statement per row of parameters, in one transaction."""
        ...

    async def migrate(self) -> list[str]:
        """Apply migrations not applied yet; return the names applied now (empty when up to date)."""
        ...

    async def load_state(self, aggregate_type: str, aggregate_id: str) -> StateRow | None:
        """The saved state row of a state-stored aggregate, or None if it was never saved."""
        ...

    async def load_snapshot(self, stream_id: str) -> SnapshotRow | None:
        """The latest snapshot of an event-sourced stream, or None."""
        ...

    async def load_stream(self, stream_id: str, after_version: int = 0) -> list[StoredEvent]:
        """The events of one stream with a version above ``after_version``, in version order."""
        ...

    async def stream_version(self, stream_id: str) -> int:
        """The highest version stored for ``stream_id`` (0 if none)."""
        ...

    async def commit(self, changes: Changes) -> None:
        """Write all of ``changes`` in one transaction; ConcurrencyError if a stream moved on meanwhile."""
        ...

    async def read_journal(self, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
        """Journal entries after a position, in position order."""
        ...

    async def read_correlation(self, correlation_id: str) -> list[StoredEvent]:
        """Every journal entry of one correlation id, in position order."""
        ...

    async def read_outbox(self, limit: int = 1000) -> list[OutboxRow]:
        """Outbox rows, oldest first (for inspection and tests; the relay claims differently)."""
        ...

    async def count(self, table: str) -> int:
        """Rows in one of the store's tables: journal, aggregate_state, snapshots, outbox, inbox, checkpoints."""
        ...

    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""
        ...
