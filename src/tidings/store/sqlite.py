"""SQLite store: the embedded default, one file in WAL mode, no server.

Short statements run on the event loop's thread. A single-row read or a small commit takes tens
of microseconds here, less than handing it to a worker thread and back (see
docs/decisions/0002-sqlite-on-the-loop.md for the numbers). The one thing that can take long is
waiting for another *process* that holds the write lock: so the loop's connection never waits
(busy_timeout 0), and a commit that finds the database busy is retried on a worker thread with a
connection that does wait.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from datetime import datetime
from pathlib import Path
from typing import Any

from tidings.domain.errors import ConcurrencyError
from tidings.store.lazy import LazyTransaction, NoTransaction
from tidings.store.migrations import migrations_for
from tidings.store.records import Changes, OutboxRow, SnapshotRow, StateRow, StoredEvent

__all__ = ["SqliteStore"]

_TABLES = frozenset(
    {"journal", "aggregate_state", "snapshots", "outbox", "inbox", "checkpoints", "relays", "local_log", "local_offsets"}
)

_JOURNAL_COLUMNS = (
    "position, stream_id, stream_version, event_id, event_type, schema_version, occurred_at, "
    "correlation_id, envelope, payload, tenant"
)
_INSERT_JOURNAL = (
    "INSERT INTO tidings_journal (stream_id, stream_version, event_id, event_type, schema_version, "
    "occurred_at, correlation_id, envelope, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_STATE = (
    "INSERT INTO tidings_aggregate_state (aggregate_type, aggregate_id, version, state, tenant) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET version = excluded.version, "
    "state = excluded.state, updated_at = strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')"
)
_UPSERT_SNAPSHOT = (
    "INSERT INTO tidings_snapshots (stream_id, version, state, tenant) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, state = excluded.state, "
    "tenant = coalesce(tidings_snapshots.tenant, excluded.tenant)"
)
_INSERT_OUTBOX = (
    "INSERT INTO tidings_outbox (event_id, partition, partition_key, topic, event_type, envelope, payload) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_OUTBOX_COLUMNS = (
    "id, event_id, partition, partition_key, topic, event_type, envelope, payload, attempts, created_at, "
    "delivered_at, parked_at, last_error"
)


class SqliteStore:
    """A Store on one SQLite file (or ``:memory:`` for a throwaway store in one process)."""

    dialect = "sqlite"

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL", busy_timeout_s: float = 30.0) -> None:
        self.path = str(path)
        self.url = f"sqlite:///{self.path}"
        self._synchronous = synchronous
        self._busy_timeout_s = busy_timeout_s
        self._conn = self._connect(wait=False)
        self._slow_conn: sqlite3.Connection | None = None
        self._slow_lock = threading.Lock()
        self._outbox_written: asyncio.Event | None = None
        self._closed = False
        # An open transaction owns the loop's connection: every other task's statement waits for
        # the lock, because on a shared connection it would silently join (or see) that transaction.
        self._tx_lock = asyncio.Lock()
        self._tx_active: object | None = None
        self._tx_outbox = False
        self._tx_mine: ContextVar[object | None] = ContextVar(f"tidings_sqlite_tx_{id(self)}", default=None)
        self._lazy: ContextVar[LazyTransaction | None] = ContextVar(f"tidings_sqlite_lazy_{id(self)}", default=None)

    def _connect(self, *, wait: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,
            timeout=self._busy_timeout_s if wait else 0.0,
            cached_statements=256,
        )
        conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode survives a process crash; a power loss may roll back the last commits,
        # each as a whole (state and outbox together), never half of one.
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        # A checkpoint fsyncs the database file; every 10,000 pages (~40 MB of WAL) instead of the
        # default 1,000 took two-row commits from 4.8k/s to 6.7k/s here (bench sqlite-offload).
        conn.execute("PRAGMA wal_autocheckpoint = 10000")
        conn.execute("PRAGMA cache_size = -65536")
        return conn

    @asynccontextmanager
    async def pinned(self) -> AsyncIterator[None]:
        """Nothing to pin: the loop's statements always use one connection."""
        yield

    @asynccontextmanager
    async def transaction(self, *, lazy: bool = False) -> AsyncIterator[SqliteStore]:
        """Within the block, this task's statements and commits form one transaction (nested: a savepoint).

        ``lazy=True`` (what a unit of work uses) begins it only when a statement other than the
        store's own reads and commit runs (``fetch``, ``run``, ``run_many``, ``transaction``,
        ``connection``); until then those take their usual fast path.
        """
        if lazy:
            async with self._lazy_block():
                yield self
            return
        if self._lazy.get() is not None:
            await self._join()
        async with self._transaction():
            yield self

    @asynccontextmanager
    async def _lazy_block(self) -> AsyncIterator[None]:
        outer = self._lazy.get()
        if self._in_my_transaction() or (outer is not None and outer.here):
            yield  # already inside a transaction of this task: every statement joins it anyway
            return
        lazy = LazyTransaction(self._transaction)
        token = self._lazy.set(lazy)
        try:
            yield
        except BaseException as exc:
            await lazy.end(exc)
            raise
        else:
            await lazy.end(None)
        finally:
            self._lazy.reset(token)

    async def _join(self) -> None:
        lazy = self._lazy.get()
        if lazy is not None and lazy.waiting and not self._in_my_transaction():
            await lazy.join()

    async def connection(self) -> sqlite3.Connection:
        """The sqlite3 connection of this task's open transaction (statements on it commit with it)."""
        if self._lazy.get() is not None:
            await self._join()
        if not self._in_my_transaction():
            raise NoTransaction(
                "store.connection() is for code running inside a transaction (a unit of work, a consumer's "
                "handler, async with store.transaction()); outside one, use fetch() and run()"
            )
        return self._conn

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[SqliteStore]:
        if self._in_my_transaction():
            async with self._savepoint():
                yield self
            return
        async with self._tx_lock:
            await self._begin_immediate()
            marker = object()
            self._tx_active, self._tx_outbox = marker, False
            token = self._tx_mine.set(marker)
            try:
                yield self
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")
                if self._tx_outbox and self._outbox_written is not None:
                    self._outbox_written.set()
            finally:
                self._tx_mine.reset(token)
                self._tx_active = None

    @asynccontextmanager
    async def _savepoint(self) -> AsyncIterator[None]:
        self._conn.execute("SAVEPOINT tidings_nested")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK TO tidings_nested")
            self._conn.execute("RELEASE tidings_nested")
            raise
        self._conn.execute("RELEASE tidings_nested")

    async def _begin_immediate(self) -> None:
        # The loop's connection never blocks on another process's write lock: poll for it instead,
        # so the loop keeps serving other tasks while we wait (up to the busy timeout).
        deadline = time.monotonic() + self._busy_timeout_s
        pause = 0.001
        while True:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _in_my_transaction(self) -> bool:
        return self._tx_active is not None and self._tx_mine.get() is self._tx_active

    async def _wait_turn(self) -> None:
        """Wait while another task's transaction holds the connection.

        After the lock is released the caller runs its statement before yielding to the loop, so
        no transaction can begin in between.
        """
        while self._tx_active is not None and self._tx_mine.get() is not self._tx_active:
            async with self._tx_lock:
                pass

    # -- schema --------------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        return await asyncio.to_thread(self._migrate_blocking)

    def _migrate_blocking(self) -> list[str]:
        with self._slow_lock:
            conn = self._slow_connection()
            conn.execute(
                "CREATE TABLE IF NOT EXISTS tidings_schema_migrations (version INTEGER PRIMARY KEY, "
                "name TEXT NOT NULL, applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00','now')))"
            )
            applied_now = []
            conn.execute("BEGIN IMMEDIATE")
            try:
                done = {row[0] for row in conn.execute("SELECT version FROM tidings_schema_migrations")}
                for migration in migrations_for("sqlite"):
                    if migration.version in done:
                        continue
                    for statement in _statements(migration.sql):
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO tidings_schema_migrations (version, name) VALUES (?, ?)",
                        (migration.version, migration.name),
                    )
                    applied_now.append(f"{migration.version:04d}_{migration.name}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return applied_now

    # -- reads ---------------------------------------------------------------------------------

    async def load_state(self, aggregate_type: str, aggregate_id: str) -> StateRow | None:
        if self._tx_active is not None:
            await self._wait_turn()
        row = self._conn.execute(
            "SELECT version, state, tenant FROM tidings_aggregate_state WHERE aggregate_type = ? AND aggregate_id = ?",
            (aggregate_type, aggregate_id),
        ).fetchone()
        return None if row is None else StateRow(aggregate_type, aggregate_id, row[0], row[1].encode(), row[2])

    async def load_snapshot(self, stream_id: str) -> SnapshotRow | None:
        if self._tx_active is not None:
            await self._wait_turn()
        row = self._conn.execute(
            "SELECT version, state, tenant FROM tidings_snapshots WHERE stream_id = ?", (stream_id,)
        ).fetchone()
        return None if row is None else SnapshotRow(stream_id, row[0], row[1].encode(), row[2])

    async def load_stream(self, stream_id: str, after_version: int = 0) -> list[StoredEvent]:
        if self._tx_active is not None:
            await self._wait_turn()
        rows = self._conn.execute(
            f"SELECT {_JOURNAL_COLUMNS} FROM tidings_journal WHERE stream_id = ? AND stream_version > ? "
            "ORDER BY stream_version",
            (stream_id, after_version),
        ).fetchall()
        return [_stored_event(row) for row in rows]

    async def stream_version(self, stream_id: str) -> int:
        if self._tx_active is not None:
            await self._wait_turn()
        row = self._conn.execute(
            "SELECT coalesce(max(stream_version), 0) FROM tidings_journal WHERE stream_id = ?", (stream_id,)
        ).fetchone()
        return int(row[0])

    async def read_journal(self, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
        if self._tx_active is not None:
            await self._wait_turn()
        rows = self._conn.execute(
            f"SELECT {_JOURNAL_COLUMNS} FROM tidings_journal WHERE position > ? ORDER BY position LIMIT ?",
            (after_position, limit),
        ).fetchall()
        return [_stored_event(row) for row in rows]

    async def read_correlation(self, correlation_id: str) -> list[StoredEvent]:
        if self._tx_active is not None:
            await self._wait_turn()
        rows = self._conn.execute(
            f"SELECT {_JOURNAL_COLUMNS} FROM tidings_journal WHERE correlation_id = ? ORDER BY position",
            (correlation_id,),
        ).fetchall()
        return [_stored_event(row) for row in rows]

    async def read_outbox(self, limit: int = 1000) -> list[OutboxRow]:
        if self._tx_active is not None:
            await self._wait_turn()
        rows = self._conn.execute(
            f"SELECT {_OUTBOX_COLUMNS} FROM tidings_outbox ORDER BY id LIMIT ?", (limit,)
        ).fetchall()
        return [_outbox_row(row) for row in rows]

    async def count(self, table: str) -> int:
        if self._tx_active is not None:
            await self._wait_turn()
        if table not in _TABLES:
            raise ValueError(f"unknown table {table!r}; one of {sorted(_TABLES)}")
        return int(self._conn.execute(f"SELECT count(*) FROM tidings_{table}").fetchone()[0])

    # -- the write -----------------------------------------------------------------------------

    async def commit(self, changes: Changes) -> None:
        if not changes:
            return
        if self._tx_active is not None:
            if self._in_my_transaction():
                self._write_nested(changes)
                self._tx_outbox = self._tx_outbox or bool(changes.outbox)
                return
            await self._wait_turn()
        try:
            self._write(self._conn, changes)
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            # Another process holds the write lock: wait for it off the loop.
            await asyncio.to_thread(self._write_waiting, changes)
        if changes.outbox and self._outbox_written is not None:
            self._outbox_written.set()

    async def wait_for_outbox(self, timeout: float) -> None:
        """Return when this process commits outbox rows, or after ``timeout`` seconds."""
        if self._outbox_written is None:
            self._outbox_written = asyncio.Event()
        try:
            await asyncio.wait_for(self._outbox_written.wait(), timeout)
        except TimeoutError:
            pass
        self._outbox_written.clear()

    def _write_nested(self, changes: Changes) -> None:
        # Inside an open transaction: a savepoint, so a concurrency error undoes this write only.
        conn = self._conn
        conn.execute("SAVEPOINT tidings_commit")
        try:
            self._insert(conn, changes)
        except sqlite3.IntegrityError as exc:
            conn.execute("ROLLBACK TO tidings_commit")
            conn.execute("RELEASE tidings_commit")
            if "tidings_journal.stream_id" in str(exc):
                raise self._concurrency_error(conn, changes) from None
            raise
        except BaseException:
            conn.execute("ROLLBACK TO tidings_commit")
            conn.execute("RELEASE tidings_commit")
            raise
        conn.execute("RELEASE tidings_commit")

    def _write_waiting(self, changes: Changes) -> None:
        with self._slow_lock:
            self._write(self._slow_connection(), changes)

    def _write(self, conn: sqlite3.Connection, changes: Changes) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._insert(conn, changes)
            conn.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            conn.execute("ROLLBACK")
            if "tidings_journal.stream_id" in str(exc):
                raise self._concurrency_error(conn, changes) from None
            raise
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _insert(conn: sqlite3.Connection, changes: Changes) -> None:
        conn.executemany(_INSERT_JOURNAL, [_journal_params(entry) for entry in changes.journal])
        if changes.states:
            conn.executemany(
                _UPSERT_STATE, [(s.aggregate_type, s.aggregate_id, s.version, s.state.decode(), s.tenant) for s in changes.states]
            )
        if changes.snapshots:
            conn.executemany(_UPSERT_SNAPSHOT, [(s.stream_id, s.version, s.state.decode(), s.tenant) for s in changes.snapshots])
        if changes.outbox:
            conn.executemany(
                _INSERT_OUTBOX,
                [
                    (o.event_id, o.partition, o.partition_key, o.topic, o.event_type, o.envelope.decode(), o.payload.decode())
                    for o in changes.outbox
                ],
            )

    def _concurrency_error(self, conn: sqlite3.Connection, changes: Changes) -> ConcurrencyError:
        for stream in changes.streams:
            actual = conn.execute(
                "SELECT coalesce(max(stream_version), 0) FROM tidings_journal WHERE stream_id = ?", (stream.stream_id,)
            ).fetchone()[0]
            if actual != stream.expected_version:
                return ConcurrencyError(stream.aggregate_type, stream.aggregate_id, stream.expected_version, actual)
        first = changes.streams[0]
        return ConcurrencyError(first.aggregate_type, first.aggregate_id, first.expected_version, None)

    def _slow_connection(self) -> sqlite3.Connection:
        if self.path == ":memory:":
            return self._conn  # a second connection would open a different, empty database
        if self._slow_conn is None:
            self._slow_conn = self._connect(wait=True)
        return self._slow_conn

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._conn.close()
        if self._slow_conn is not None:
            self._slow_conn.close()

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement on the loop's connection and return its rows (for tools and tests)."""
        lazy = self._lazy.get()
        if lazy is not None and lazy.waiting and not self._in_my_transaction():
            raise NoTransaction(
                "store.execute() inside a unit of work would commit on its own, outside the command's transaction; "
                "use await uow.execute(sql, params) (or await store.fetch/run) instead"
            )
        return self._conn.execute(sql, params).fetchall()

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one short statement (``?`` placeholders; datetimes bound as ISO text); empty if it returns none."""
        if self._lazy.get() is not None:
            await self._join()
        if self._tx_active is not None:
            await self._wait_turn()
        return self._conn.execute(sql, _bind(params)).fetchall()

    async def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute one short statement in its own transaction (or the task's open one); the rows it changed."""
        if self._lazy.get() is not None:
            await self._join()
        if self._tx_active is not None:
            if self._in_my_transaction():
                return self._conn.execute(sql, _bind(params)).rowcount
            await self._wait_turn()
        try:
            return self._conn.execute(sql, _bind(params)).rowcount
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            return await asyncio.to_thread(self._run_waiting, sql, _bind(params))

    async def run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Execute one statement for each row of parameters, all in one transaction."""
        bound = [_bind(row) for row in rows]
        if self._lazy.get() is not None:
            await self._join()
        if self._tx_active is not None:
            if self._in_my_transaction():
                self._conn.executemany(sql, bound)
                return
            await self._wait_turn()
        try:
            self._run_many(self._conn, sql, bound)
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            await asyncio.to_thread(self._run_many_waiting, sql, bound)

    def _run_many_waiting(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        with self._slow_lock:
            self._run_many(self._slow_connection(), sql, rows)

    @staticmethod
    def _run_many(conn: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(sql, rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _run_waiting(self, sql: str, params: tuple[Any, ...]) -> int:
        with self._slow_lock:
            return self._slow_connection().execute(sql, params).rowcount


def _bind(params: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(p.isoformat() if isinstance(p, datetime) else p for p in params)


def _statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def _journal_params(entry: Any) -> tuple[Any, ...]:
    return (
        entry.stream_id,
        entry.stream_version,
        entry.event_id,
        entry.event_type,
        entry.schema_version,
        entry.occurred_at.isoformat(),
        entry.correlation_id,
        entry.envelope.decode(),
        entry.payload.decode(),
    )


def _stored_event(row: tuple[Any, ...]) -> StoredEvent:
    return StoredEvent(
        position=row[0],
        stream_id=row[1],
        stream_version=row[2],
        event_id=row[3],
        event_type=row[4],
        schema_version=row[5],
        occurred_at=datetime.fromisoformat(row[6]),
        correlation_id=row[7],
        envelope=row[8].encode(),
        payload=row[9].encode(),
        tenant=row[10],
    )


def _outbox_row(row: tuple[Any, ...]) -> OutboxRow:
    return OutboxRow(
        id=row[0],
        event_id=row[1],
        partition=row[2],
        partition_key=row[3],
        topic=row[4],
        event_type=row[5],
        envelope=row[6].encode(),
        payload=row[7].encode(),
        attempts=row[8],
        created_at=datetime.fromisoformat(row[9]),
        delivered_at=datetime.fromisoformat(row[10]) if row[10] else None,
        parked_at=datetime.fromisoformat(row[11]) if row[11] else None,
        last_error=row[12],
    )
