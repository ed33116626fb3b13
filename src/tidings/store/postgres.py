"""PostgreSQL store: psycopg 3, async, pooled; a commit is one statement, one round trip.

The whole unit of work (journal rows, state upserts, snapshots, outbox rows) is written by one
INSERT whose other INSERTs ride along as data-modifying CTEs, so it is atomic as one statement and
costs one network round trip whatever it touched (docs/decisions/0003). Concurrency needs no
read-before-write: a racing save collides on the journal's unique (stream_id, stream_version) and
the whole statement is rolled back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.sql import SQL, Composed, Identifier
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from tidings.domain.errors import ConcurrencyError
from tidings.messaging.redaction import redact_url, scrub
from tidings.store.lazy import LazyTransaction, NoTransaction
from tidings.store.migrations import migrations_for
from tidings.store.names import sql_name
from tidings.store.records import Changes, OutboxRow, SnapshotRow, StateRow, StoredEvent
from tidings.store.row_security import TENANT_SETTING, check_tenant

__all__ = ["PostgresStore"]

_TABLES = frozenset(
    {"journal", "aggregate_state", "snapshots", "outbox", "inbox", "checkpoints", "relays", "local_log", "local_offsets"}
)
# Any constant works; it only has to be the same for every process migrating one database.
_MIGRATION_LOCK = 0x7469_6469_6E67

_JOURNAL_COLUMNS = (
    "position, stream_id, stream_version, event_id::text, event_type, schema_version, occurred_at, "
    "correlation_id::text, envelope::text, payload::text, tenant"
)
_INSERT_JOURNAL = (
    "INSERT INTO tidings_journal (stream_id, stream_version, event_id, event_type, schema_version, "
    "occurred_at, correlation_id, envelope, payload) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_UPSERT_STATE = (
    "INSERT INTO tidings_aggregate_state (aggregate_type, aggregate_id, version, state, tenant) VALUES (%s, %s, %s, %s, %s) "
    "ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET version = excluded.version, "
    "state = excluded.state, updated_at = now()"
)
_UPSERT_SNAPSHOT = (
    "INSERT INTO tidings_snapshots (stream_id, version, state, tenant) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, state = excluded.state, created_at = now(), "
    "tenant = coalesce(tidings_snapshots.tenant, excluded.tenant)"
)
_INSERT_OUTBOX = (
    "INSERT INTO tidings_outbox (event_id, partition, partition_key, topic, event_type, envelope, payload) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
_OUTBOX_COLUMNS = (
    "id, event_id::text, partition, partition_key, topic, event_type, envelope::text, payload::text, attempts, "
    "created_at, delivered_at, parked_at, last_error"
)


class PostgresStore:
    """A Store on PostgreSQL; open it with :func:`tidings.store.open_store` or ``await PostgresStore.open(url)``."""

    dialect = "postgresql"

    def __init__(
        self, url: str, pool: AsyncConnectionPool, *, schema: str | None = None, tenant: str | None = None
    ) -> None:
        self.url = url
        self.schema = schema
        #: The tenant every connection of this store acts for (row-level security), or None.
        self.tenant = tenant
        self._pool = pool
        # One variable per store: a task may use stores of two databases at once.
        self._pinned: ContextVar[psycopg.AsyncConnection[Any] | None] = ContextVar(f"tidings_pinned_{id(self)}", default=None)
        self._lazy: ContextVar[LazyTransaction | None] = ContextVar(f"tidings_lazy_{id(self)}", default=None)

    @classmethod
    async def open(
        cls, url: str, *, schema: str | None = None, tenant: str | None = None, min_size: int = 1, max_size: int = 10
    ) -> PostgresStore:
        """Connect a pool to ``url``; with ``schema``, every table lives in (and is searched in) that schema.

        With ``tenant``, every connection sets ``tidings.tenant``: where row-level security is on
        (:func:`tidings.store.row_security.enable_row_security`), this store sees and writes only
        that tenant's rows. ``schema`` must be a plain identifier (letters, digits, ``_``): anything
        else is refused with InvalidName before a connection is made.
        """
        if schema is not None:
            sql_name(schema, "PostgreSQL schema name")
        kwargs: dict[str, Any] = {"autocommit": True, "row_factory": tuple_row}
        options = _session_options(schema, tenant)
        if options:
            kwargs["options"] = options
        pool = AsyncConnectionPool(url, min_size=min_size, max_size=max_size, kwargs=kwargs, open=False)
        try:
            await pool.open(wait=True, timeout=10)
        except Exception as exc:
            await pool.close()
            raise ConnectionError(
                f"cannot connect to PostgreSQL at {redact_url(url)}: {scrub(str(exc), url)} — is the server running "
                "and the URL right?"
            ) from None
        if schema:
            async with pool.connection() as conn:
                await conn.execute(SQL("CREATE SCHEMA IF NOT EXISTS {}").format(Identifier(schema)))
        return cls(url, pool, schema=schema, tenant=tenant)

    # -- connections ---------------------------------------------------------------------------

    @asynccontextmanager
    async def pinned(self) -> AsyncIterator[None]:
        """Use one pooled connection for everything this task does inside the block (one command).

        A command reads, then commits; pinning saves the second pool checkout (about a tenth of
        the client's CPU per command here) and nothing else changes: statements still autocommit.
        """
        if self._pinned.get() is not None:
            yield
            return
        async with self._pool.connection() as conn:
            token = self._pinned.set(conn)
            try:
                yield
            finally:
                self._pinned.reset(token)

    @asynccontextmanager
    async def transaction(self, *, lazy: bool = False) -> AsyncIterator[PostgresStore]:
        """Within the block, this task's statements and commits form one transaction (nested: a savepoint).

        A consumer writes its inbox row, its effects and any command's commit in one of these, so
        they commit together or not at all. ``lazy=True`` (what a unit of work uses) sends BEGIN
        only when a statement other than the store's own reads and commit runs (``fetch``,
        ``run``, ``run_many``, ``execute``, ``transaction``, ``connection``); until then a command
        keeps its one-statement commit.
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
    async def _transaction(self) -> AsyncIterator[PostgresStore]:
        async with self.pinned():
            conn = self._pinned.get()
            assert conn is not None
            async with conn.transaction():
                yield self

    def _in_transaction(self) -> bool:
        conn = self._pinned.get()
        return conn is not None and conn.info.transaction_status != TransactionStatus.IDLE

    @asynccontextmanager
    async def _lazy_block(self) -> AsyncIterator[None]:
        outer = self._lazy.get()
        if (outer is not None and outer.here) or self._in_transaction():
            yield  # already inside a transaction of this task: every statement joins it anyway
            return
        async with self.pinned():
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
        if lazy is not None and lazy.waiting:
            await lazy.join()

    async def connection(self) -> psycopg.AsyncConnection[Any]:
        """The psycopg connection of this task's open transaction (statements on it commit with it)."""
        if self._lazy.get() is not None:
            await self._join()
        if not self._in_transaction():
            raise NoTransaction(
                "store.connection() is for code running inside a transaction (a unit of work, a consumer's "
                "handler, async with store.transaction()); outside one, use fetch() and run()"
            )
        conn = self._pinned.get()
        assert conn is not None
        return conn

    @asynccontextmanager
    async def joined(self, conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[None]:
        """Within the block, this task's statements run on ``conn``, in the transaction its owner opened.

        For a connection the user owns (their psycopg connection, or the one under their
        SQLAlchemy session): a command handled or a message published inside the block writes
        its journal, state and outbox rows on it, in a savepoint, and never commits or rolls back
        the user's transaction: their commit publishes ours with theirs, their rollback leaves
        nothing. The outbox trigger's NOTIFY is transactional, so a waiting relay wakes when the
        user commits. ``conn`` must reach this store's tables (same database; its search_path
        includes the store's schema) and keep psycopg's default tuple rows. NoTransaction if it
        is in autocommit mode outside a transaction, or its transaction has failed.
        """
        if conn.closed:
            raise NoTransaction("the connection to join is closed; pass the connection of an open transaction")
        if conn.row_factory is not tuple_row:
            raise NoTransaction(
                "the connection to join has a row factory of its own; tidings reads tuples: pass row_factory= to "
                "your cursors instead of the connection"
            )
        status = conn.info.transaction_status
        if status == TransactionStatus.INERROR:
            raise NoTransaction(
                "the connection's transaction has failed (a statement raised inside it); roll it back and begin again"
            )
        if status == TransactionStatus.IDLE:
            if conn.autocommit:
                raise NoTransaction(
                    "the connection to join is in autocommit mode outside a transaction, so each of our statements "
                    "would commit on its own; open one first (async with conn.transaction(): …)"
                )
            # A non-autocommit connection begins implicitly with its first statement. Begin it now,
            # so the checks below (and the commit's savepoint) see the transaction rather than open
            # and commit one of their own.
            await conn.execute("SELECT 1")
        elif status != TransactionStatus.INTRANS:
            raise NoTransaction(f"the connection to join is busy ({status.name}); join it between statements")
        token = self._pinned.set(conn)
        lazy_token = self._lazy.set(None)  # the caller's transaction is the one every statement joins
        try:
            yield
        finally:
            self._lazy.reset(lazy_token)
            self._pinned.reset(token)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        conn = self._pinned.get()
        if conn is not None:
            yield conn
        else:
            async with self._pool.connection() as conn:
                yield conn

    # -- schema --------------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        applied_now: list[str] = []
        async with self._pool.connection() as conn, conn.transaction():
            # Serialises concurrent migrators (several processes starting at once).
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS tidings_schema_migrations (version INTEGER PRIMARY KEY, "
                "name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in await (await conn.execute("SELECT version FROM tidings_schema_migrations")).fetchall()}
            for migration in migrations_for("postgresql"):
                if migration.version in done:
                    continue
                await conn.execute(migration.sql.encode())
                await conn.execute(
                    "INSERT INTO tidings_schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
                applied_now.append(f"{migration.version:04d}_{migration.name}")
        return applied_now

    # -- reads ---------------------------------------------------------------------------------

    async def _fetchall(self, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        async with self._connection() as conn:
            cur = await conn.execute(statement, params)
            return await cur.fetchall()

    async def _fetchone(self, statement: str | Composed, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        async with self._connection() as conn:
            cur = await conn.execute(statement, params)
            return await cur.fetchone()

    async def load_state(self, aggregate_type: str, aggregate_id: str) -> StateRow | None:
        row = await self._fetchone(
            "SELECT version, state::text, tenant FROM tidings_aggregate_state WHERE aggregate_type = %s AND aggregate_id = %s",
            (aggregate_type, aggregate_id),
        )
        return None if row is None else StateRow(aggregate_type, aggregate_id, row[0], row[1].encode(), row[2])

    async def load_snapshot(self, stream_id: str) -> SnapshotRow | None:
        row = await self._fetchone("SELECT version, state::text, tenant FROM tidings_snapshots WHERE stream_id = %s", (stream_id,))
        return None if row is None else SnapshotRow(stream_id, row[0], row[1].encode(), row[2])

    async def load_stream(self, stream_id: str, after_version: int = 0) -> list[StoredEvent]:
        rows = await self._fetchall(
            f"SELECT {_JOURNAL_COLUMNS} FROM tidings_journal WHERE stream_id = %s AND stream_version > %s "
            "ORDER BY stream_version",
            (stream_id, after_version),
        )
        return [_stored_event(row) for row in rows]

    async def stream_version(self, stream_id: str) -> int:
        row = await self._fetchone(
            "SELECT coalesce(max(stream_version), 0) FROM tidings_journal WHERE stream_id = %s", (stream_id,)
        )
        return int(row[0]) if row else 0

    async def read_journal(self, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
        rows = await self._fetchall(
            f"SELECT {_JOURNAL_COLUMNS} FROM tidings_journal WHERE position > %s ORDER BY position LIMIT %s",
            (after_position, limit),
        )
        return [_stored_event(row) for row in rows]

    async def read_correlation(self, correlation_id: str) -> list[StoredEvent]:
        rows = await self._fetchall(
            f"SELECT {_JOURNAL_COLUMNS} FROM tidings_journal WHERE correlation_id = %s ORDER BY position",
            (correlation_id,),
        )
        return [_stored_event(row) for row in rows]

    async def read_outbox(self, limit: int = 1000) -> list[OutboxRow]:
        rows = await self._fetchall(f"SELECT {_OUTBOX_COLUMNS} FROM tidings_outbox ORDER BY id LIMIT %s", (limit,))
        return [_outbox_row(row) for row in rows]

    async def count(self, table: str) -> int:
        if table not in _TABLES:
            raise ValueError(f"unknown table {table!r}; one of {sorted(_TABLES)}")
        row = await self._fetchone(SQL("SELECT count(*) FROM {}").format(Identifier(f"tidings_{table}")), ())
        return int(row[0]) if row else 0

    # -- the write -----------------------------------------------------------------------------

    async def commit(self, changes: Changes) -> None:
        if not changes:
            return
        try:
            async with self._connection() as conn:
                if conn.info.transaction_status == TransactionStatus.INTRANS:
                    # Inside a caller's transaction: a savepoint, so a conflict undoes this write only
                    # and the caller may reload and retry.
                    async with conn.transaction():
                        await self._write(conn, changes)
                else:
                    await self._write(conn, changes)
        except pg_errors.DeadlockDetected:
            # Two commits touching the same aggregates in opposite orders: one is chosen to fail.
            # It is a conflict like any other, and a retry (after reloading) resolves it.
            raise await self._concurrency_error(changes) from None
        except pg_errors.UniqueViolation as exc:
            if exc.diag.constraint_name == "tidings_journal_stream_version":
                # Asked once the connection is back in the pool: if every pooled connection were
                # held by a conflicting commit, asking while holding one would wait forever.
                raise await self._concurrency_error(changes) from None
            raise

    @staticmethod
    async def _write(conn: psycopg.AsyncConnection[Any], changes: Changes) -> None:
        if _rows_in(changes) <= _MAX_ROWS_PER_STATEMENT:
            await conn.execute(*_commit_statement(changes))
        else:
            await _commit_pipelined(conn, changes)

    async def _concurrency_error(self, changes: Changes) -> ConcurrencyError:
        for stream in changes.streams:
            actual = await self.stream_version(stream.stream_id)
            if actual != stream.expected_version:
                return ConcurrencyError(stream.aggregate_type, stream.aggregate_id, stream.expected_version, actual)
        first = changes.streams[0]
        return ConcurrencyError(first.aggregate_type, first.aggregate_id, first.expected_version, None)

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one statement written with ``?`` placeholders (the dialect-neutral form); empty if it returns none."""
        if self._lazy.get() is not None:
            await self._join()
        async with self._connection() as conn:
            cur = await conn.execute(_qmark(sql), tuple(params))
            return await cur.fetchall() if cur.description is not None else []

    async def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute one ``?``-placeholder statement in its own transaction (or the task's open one); the rows it changed."""
        if self._lazy.get() is not None:
            await self._join()
        async with self._connection() as conn:
            cur = await conn.execute(_qmark(sql), tuple(params))
            return cur.rowcount

    async def run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Execute one ``?``-placeholder statement per row of parameters, all in one transaction."""
        if self._lazy.get() is not None:
            await self._join()
        async with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.executemany(_qmark(sql), [tuple(row) for row in rows])

    async def dedicated_connection(self) -> psycopg.AsyncConnection[Any]:
        """A connection outside the pool (for session advisory locks and LISTEN), same database and schema."""
        kwargs: dict[str, Any] = {"autocommit": True}
        options = _session_options(self.schema, self.tenant)
        if options:
            kwargs["options"] = options
        return await psycopg.AsyncConnection.connect(self.url, **kwargs)

    async def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement and return its rows, if any (for tools and tests)."""
        if self._lazy.get() is not None:
            await self._join()
        async with self._connection() as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchall() if cur.description else []

    async def execute_in_transaction(self, statements: Sequence[Any]) -> None:
        """Run ``statements`` (SQL text or composed ``psycopg.sql``) in one transaction (for tools such as row security)."""
        async with self._connection() as conn, conn.transaction():
            for statement in statements:
                await conn.execute(statement)

    async def drop_schema(self) -> None:
        """Drop this store's schema and everything in it (tests and throwaway runs clean up with this)."""
        if not self.schema:
            raise ValueError("this store was opened without schema=…; it will not drop the connection's default schema")
        async with self._connection() as conn:
            await conn.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(self.schema)))

    async def close(self) -> None:
        await self._pool.close()


# -- the commit statement ----------------------------------------------------------------------
#
# psycopg's pipeline mode sends BEGIN, the inserts and COMMIT in one flight too, but its client
# side costs several times the CPU of a single statement (~720 µs against ~140 µs of client CPU
# per transaction on the 2-core dev host, docs/decisions/0003), and CPU is what a busy
# application server runs out of. One INSERT
# with the others as data-modifying CTEs is one statement: atomic on its own, one round trip,
# prepared once per shape (how many rows of each kind), and it raises the same UniqueViolation.

# Beyond this many rows one statement would approach PostgreSQL's 65,535 parameters: such a
# (rare) unit of work goes through executemany in a pipelined transaction instead.
_MAX_ROWS_PER_STATEMENT = 1000

_STATE_CONFLICT = (
    " ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET version = excluded.version, "
    "state = excluded.state, updated_at = now()"
)
_SNAPSHOT_CONFLICT = (
    " ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, state = excluded.state, created_at = now(), "
    "tenant = coalesce(tidings_snapshots.tenant, excluded.tenant)"
)
# (statement up to VALUES, placeholders per row, what follows the rows), in Changes' order.
_PARTS = (
    (_INSERT_JOURNAL.split(" VALUES ", 1)[0], 9, ""),
    (_UPSERT_STATE.split(" VALUES ", 1)[0], 5, _STATE_CONFLICT),
    (_UPSERT_SNAPSHOT.split(" VALUES ", 1)[0], 4, _SNAPSHOT_CONFLICT),
    (_INSERT_OUTBOX.split(" VALUES ", 1)[0], 7, ""),
)


def _rows_in(changes: Changes) -> int:
    return len(changes.journal) + len(changes.states) + len(changes.snapshots) + len(changes.outbox)


def _last_per_key(rows: list[Any], key: Any) -> list[Any]:
    # One statement may upsert a row only once; the pipelined version let the last write win.
    if len(rows) < 2:
        return rows
    return list({key(row): row for row in rows}.values())


def _commit_statement(changes: Changes) -> tuple[str, list[Any]]:
    """The single INSERT (with CTEs) that writes all of ``changes``, and its parameters."""
    states = _last_per_key(changes.states, lambda s: (s.aggregate_type, s.aggregate_id))
    snapshots = _last_per_key(changes.snapshots, lambda s: s.stream_id)
    params: list[Any] = []
    for entry in changes.journal:
        params.extend(_journal_params(entry))
    for s in states:
        params.extend((s.aggregate_type, s.aggregate_id, s.version, s.state.decode(), s.tenant))
    for snap in snapshots:
        params.extend((snap.stream_id, snap.version, snap.state.decode(), snap.tenant))
    for o in changes.outbox:
        params.extend((o.event_id, o.partition, o.partition_key, o.topic, o.event_type, o.envelope.decode(), o.payload.decode()))
    shape = (len(changes.journal), len(states), len(snapshots), len(changes.outbox))
    return _statement_for(shape), params


@lru_cache(maxsize=128)
def _statement_for(shape: tuple[int, int, int, int]) -> str:
    """SQL text for a commit of this many journal, state, snapshot and outbox rows."""
    inserts = []
    for (head, width, tail), rows in zip(_PARTS, shape, strict=True):
        if rows:
            row = "(" + ", ".join(["%s"] * width) + ")"
            inserts.append(f"{head} VALUES {', '.join([row] * rows)}{tail}")
    *ctes, last = inserts
    if not ctes:
        return last
    return "WITH " + ", ".join(f"w{i} AS ({sql})" for i, sql in enumerate(ctes)) + " " + last


async def _commit_pipelined(conn: psycopg.AsyncConnection[Any], changes: Changes) -> None:
    """Write a unit of work too large for one statement: executemany per table in one pipelined transaction."""
    async with conn.pipeline(), conn.transaction(), conn.cursor() as cur:
        if changes.journal:
            await cur.executemany(_INSERT_JOURNAL, [_journal_params(entry) for entry in changes.journal])
        if changes.states:
            await cur.executemany(
                _UPSERT_STATE, [(s.aggregate_type, s.aggregate_id, s.version, s.state.decode(), s.tenant) for s in changes.states]
            )
        if changes.snapshots:
            await cur.executemany(_UPSERT_SNAPSHOT, [(s.stream_id, s.version, s.state.decode(), s.tenant) for s in changes.snapshots])
        if changes.outbox:
            await cur.executemany(
                _INSERT_OUTBOX,
                [
                    (o.event_id, o.partition, o.partition_key, o.topic, o.event_type, o.envelope.decode(), o.payload.decode())
                    for o in changes.outbox
                ],
            )


@lru_cache(maxsize=256)
def _qmark(sql: str) -> str:
    # Our SQL never contains a literal "?" or "%": the translation is a plain replace.
    return sql.replace("%", "%%").replace("?", "%s")


def _session_options(schema: str | None, tenant: str | None) -> str:
    """The libpq ``options`` of every connection: the schema to search, and the tenant row security compares."""
    options = []
    if schema:
        # Quoted, so a capitalised schema is searched under the name it was created with; the name
        # (checked by sql_name) holds no space or backslash, which libpq's options string treats specially.
        options.append(f"-c search_path={Identifier(schema).as_string()}")
    if tenant is not None:
        # check_tenant keeps it to characters that need no quoting in an options string.
        options.append(f"-c {TENANT_SETTING}={check_tenant(tenant)}")
    return " ".join(options)


def _journal_params(entry: Any) -> tuple[Any, ...]:
    return (
        entry.stream_id,
        entry.stream_version,
        entry.event_id,
        entry.event_type,
        entry.schema_version,
        entry.occurred_at,
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
        occurred_at=row[6],
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
        created_at=row[9],
        delivered_at=row[10],
        parked_at=row[11],
        last_error=row[12],
    )
