"""PostgreSQL store: psycopg 3, async, pooled; a commit is one pipelined round trip.

The whole unit of work (BEGIN, journal rows, state upserts, snapshots, outbox rows, COMMIT) is
sent in pipeline mode and synchronised once, so a command costs one network round trip to write
whatever it touched. Concurrency needs no read-before-write: a racing save collides on the
journal's unique (stream_id, stream_version) and the whole transaction is rolled back.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from tidings.domain.errors import ConcurrencyError
from tidings.store.migrations import migrations_for
from tidings.store.records import Changes, OutboxRow, SnapshotRow, StateRow, StoredEvent

__all__ = ["PostgresStore"]

_TABLES = frozenset({"journal", "aggregate_state", "snapshots", "outbox", "inbox", "checkpoints"})
# Any constant works; it only has to be the same for every process migrating one database.
_MIGRATION_LOCK = 0x7469_6469_6E67

_JOURNAL_COLUMNS = (
    "position, stream_id, stream_version, event_id::text, event_type, schema_version, occurred_at, "
    "correlation_id::text, envelope::text, payload::text"
)
_INSERT_JOURNAL = (
    "INSERT INTO tidings_journal (stream_id, stream_version, event_id, event_type, schema_version, "
    "occurred_at, correlation_id, envelope, payload) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_UPSERT_STATE = (
    "INSERT INTO tidings_aggregate_state (aggregate_type, aggregate_id, version, state) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET version = excluded.version, "
    "state = excluded.state, updated_at = now()"
)
_UPSERT_SNAPSHOT = (
    "INSERT INTO tidings_snapshots (stream_id, version, state) VALUES (%s, %s, %s) "
    "ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, state = excluded.state, created_at = now()"
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

    def __init__(self, url: str, pool: AsyncConnectionPool, *, schema: str | None = None) -> None:
        self.url = url
        self.schema = schema
        self._pool = pool

    @classmethod
    async def open(
        cls, url: str, *, schema: str | None = None, min_size: int = 1, max_size: int = 10
    ) -> PostgresStore:
        """Connect a pool to ``url``; with ``schema``, every table lives in (and is searched in) that schema."""
        kwargs: dict[str, Any] = {"autocommit": True, "row_factory": tuple_row}
        if schema:
            kwargs["options"] = f"-c search_path={schema}"
        pool = AsyncConnectionPool(url, min_size=min_size, max_size=max_size, kwargs=kwargs, open=False)
        try:
            await pool.open(wait=True, timeout=10)
        except Exception as exc:
            await pool.close()
            raise ConnectionError(
                f"cannot connect to PostgreSQL at {_redacted(url)}: {exc} — is the server running and the URL right?"
            ) from exc
        if schema:
            async with pool.connection() as conn:
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        return cls(url, pool, schema=schema)

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

    async def _fetchall(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

    async def _fetchone(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchone()

    async def load_state(self, aggregate_type: str, aggregate_id: str) -> StateRow | None:
        row = await self._fetchone(
            "SELECT version, state::text FROM tidings_aggregate_state WHERE aggregate_type = %s AND aggregate_id = %s",
            (aggregate_type, aggregate_id),
        )
        return None if row is None else StateRow(aggregate_type, aggregate_id, row[0], row[1].encode())

    async def load_snapshot(self, stream_id: str) -> SnapshotRow | None:
        row = await self._fetchone("SELECT version, state::text FROM tidings_snapshots WHERE stream_id = %s", (stream_id,))
        return None if row is None else SnapshotRow(stream_id, row[0], row[1].encode())

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
        row = await self._fetchone(f"SELECT count(*) FROM tidings_{table}", ())
        return int(row[0]) if row else 0

    # -- the write -----------------------------------------------------------------------------

    async def commit(self, changes: Changes) -> None:
        if not changes:
            return
        async with self._pool.connection() as conn:
            try:
                async with conn.pipeline(), conn.transaction(), conn.cursor() as cur:
                    await cur.executemany(_INSERT_JOURNAL, [_journal_params(entry) for entry in changes.journal])
                    if changes.states:
                        await cur.executemany(
                            _UPSERT_STATE,
                            [(s.aggregate_type, s.aggregate_id, s.version, s.state.decode()) for s in changes.states],
                        )
                    if changes.snapshots:
                        await cur.executemany(
                            _UPSERT_SNAPSHOT, [(s.stream_id, s.version, s.state.decode()) for s in changes.snapshots]
                        )
                    if changes.outbox:
                        await cur.executemany(
                            _INSERT_OUTBOX,
                            [
                                (o.event_id, o.partition, o.partition_key, o.topic, o.event_type,
                                 o.envelope.decode(), o.payload.decode())
                                for o in changes.outbox
                            ],
                        )
            except pg_errors.UniqueViolation as exc:
                if exc.diag.constraint_name == "tidings_journal_stream_version":
                    raise await self._concurrency_error(changes) from None
                raise

    async def _concurrency_error(self, changes: Changes) -> ConcurrencyError:
        for stream in changes.streams:
            actual = await self.stream_version(stream.stream_id)
            if actual != stream.expected_version:
                return ConcurrencyError(stream.aggregate_type, stream.aggregate_id, stream.expected_version, actual)
        first = changes.streams[0]
        return ConcurrencyError(first.aggregate_type, first.aggregate_id, first.expected_version, None)

    async def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement and return its rows, if any (for tools and tests)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchall() if cur.description else []

    async def close(self) -> None:
        await self._pool.close()


def _redacted(url: str) -> str:
    try:
        return psycopg.conninfo.make_conninfo(url, password="***") if "password" in url or "@" in url else url
    except Exception:
        return "<the configured URL>"


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
