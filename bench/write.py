"""Commands/s through tidings' Application (load, record, translate, commit) vs the same rows by direct SQL.

`ours`: `Application.handle(ReportUsage)` loads a License (state row, or its event stream), records
one `UsageReported`, a translator turns it into one `LicenseUsageReported` for the outbox, and the
unit of work commits journal + state (or journal only) + outbox in one transaction; conflicts are
retried (`--retries`) and counted.

`raw`: hand-written SQL doing the same database work per command on the same tables: read the
aggregate (the same SELECT), then one transaction with the same rows (same columns, JSON of the
same size). PostgreSQL: psycopg 3 async, a pool of N connections, the writes as one INSERT with
CTEs (`--raw-write pipeline` for BEGIN/INSERTs/COMMIT in pipeline mode, which measured slower).
SQLite: stdlib sqlite3 on one connection with the store's settings (WAL, synchronous=NORMAL...).
`raw_insert_only` is the pure write limit for reference: the same rows, no read (state in memory).
`limit` (PostgreSQL, when pgbench is installed): the server's own C client, `pgbench`, running the
raw insert-only statement (same columns, JSON of the same sizes) from a custom script with the same
number of clients, in the same rounds: what the database does when no Python runs at all.
Client CPU (time.process_time of this process around each measured section) is reported per
command for ours and raw; pgbench's CPU is in another process and not counted.

Each contender has its own fresh database (a PostgreSQL schema, or a SQLite file) migrated with
tidings' own migrations, and they run in alternating rounds so a slow phase of the machine hits
all of them.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool

from bench.harness import Progress
from bench.workload import (
    Driven,
    Persistence,
    Workload,
    command_plan,
    drive,
    latency_summary,
    license_ids,
    offer_command,
    usage_command,
)
from tidings.messaging import new_id
from tidings.messaging.personal import MASTER_KEY_ENV, MasterKey
from tidings.store import Store, open_store

NAME = "write"

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"

AGGREGATE_TYPE = "License"
SOURCE = "licensing"
USAGE_EVENT = "licensing.UsageReported"
OFFER_EVENT = "licensing.LicenseOffered"
CONTRACT = "licensing.LicenseUsageReported"
PARTITIONS = 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the write benchmark."""
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite", help="database (default sqlite)")
    parser.add_argument("--concurrency", type=int, default=1, help="commands in flight at once (default 1)")
    parser.add_argument("--commands", type=int, default=20_000, help="measured commands per contender (default 20000)")
    parser.add_argument("--aggregates", type=int, default=1_000, help="pre-created licenses the commands spread over")
    parser.add_argument("--persistence", choices=["state", "events"], default="state", help="aggregate style (default state)")
    parser.add_argument("--retries", type=int, default=3, help="retries of a command after a concurrency conflict")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds the commands are split into")
    parser.add_argument("--database-url", default=DEFAULT_POSTGRES_URL, help="PostgreSQL server for --store postgresql")
    parser.add_argument(
        "--raw-write",
        choices=["statement", "pipeline"],
        default="statement",
        help="PostgreSQL raw: one INSERT with CTEs (default, fastest measured) or a pipelined BEGIN/INSERTs/COMMIT",
    )
    parser.add_argument(
        "--personal", action="store_true",
        help="ours with personal fields (reporter in events and contract, buyer in state), sealed per subject",
    )
    parser.add_argument("--profile", metavar="FILE", help="write cProfile stats of ours' measured rounds to FILE")


# --- raw rows: the same columns and JSON shapes tidings writes, built by hand ----------------------

_encode = msgspec.json.encode


def _stream_id(license_id: str) -> str:
    return f"{AGGREGATE_TYPE}:{license_id}"


def _envelope(
    event_id: str, event_type: str, now: datetime, license_id: str, version: int, correlation_id: str, causation_id: str
) -> str:
    # Same keys in the same order as tidings' Envelope, so the stored JSON has the same size.
    return _encode(
        {
            "event_id": event_id,
            "event_type": event_type,
            "schema_version": 1,
            "occurred_at": now,
            "aggregate_type": AGGREGATE_TYPE,
            "aggregate_id": license_id,
            "aggregate_version": version,
            "correlation_id": correlation_id,
            "causation_id": causation_id,
            "user_id": None,
            "tenant": None,
            "source": SOURCE,
        }
    ).decode()


@dataclass(slots=True)
class Rows:
    """Parameters of the rows one command writes."""

    journal: tuple[Any, ...]
    state: tuple[Any, ...] | None
    outbox: tuple[Any, ...] | None


def offer_rows(license_id: str, n: int, persistence: Persistence) -> tuple[Rows, dict[str, Any]]:
    """The rows that create license `n` (journal + state row), and its state."""
    command = offer_command(license_id, n)
    now = datetime.now(UTC)
    event_id = command_id = new_id()
    payload = {
        "asset_id": command.asset_id,
        "buyer_id": command.buyer_id,
        "allowance": command.allowance,
        "price_cents": command.price_cents,
        "currency": command.currency,
    }
    # Field order of the License's state, so the state JSON matches tidings' byte for byte in size.
    state = {
        "asset_id": command.asset_id,
        "buyer_id": command.buyer_id,
        "allowance": command.allowance,
        "used": 0,
        "price_cents": command.price_cents,
        "currency": command.currency,
    }
    journal = (
        _stream_id(license_id), 1, event_id, OFFER_EVENT, 1, now, command_id,
        _envelope(event_id, OFFER_EVENT, now, license_id, 1, command_id, command_id), _encode(payload).decode(),
    )
    state_row = (AGGREGATE_TYPE, license_id, 1, _encode(state).decode()) if persistence == "state" else None
    return Rows(journal, state_row, None), state


def usage_rows(license_id: str, n: int, version: int, state: dict[str, Any], persistence: Persistence) -> Rows:
    """The rows of the `n`-th usage report on a license loaded at `version` with `state` (updated in place)."""
    command = usage_command(license_id, n)
    now = datetime.now(UTC)
    command_id, event_id, outbox_id = new_id(), new_id(), new_id()
    used_total = state["used"] + command.units
    state["used"] = used_total
    new_version = version + 1
    journal = (
        _stream_id(license_id), new_version, event_id, USAGE_EVENT, 1, now, command_id,
        _envelope(event_id, USAGE_EVENT, now, license_id, new_version, command_id, command_id),
        _encode(
            {"units": command.units, "channel": command.channel, "reported_by": command.reported_by, "used_total": used_total}
        ).decode(),
    )
    outbox = (
        outbox_id, zlib.crc32(license_id.encode()) % PARTITIONS, license_id, CONTRACT, CONTRACT,
        _envelope(outbox_id, CONTRACT, now, license_id, new_version, command_id, event_id),
        _encode(
            {
                "license_id": license_id,
                "units": command.units,
                "used_total": used_total,
                "channel": command.channel,
                "reported_by": command.reported_by,
            }
        ).decode(),
    )
    state_row = (AGGREGATE_TYPE, license_id, new_version, _encode(state).decode()) if persistence == "state" else None
    return Rows(journal, state_row, outbox)


def fold_stream(payloads: list[Any]) -> tuple[int, dict[str, Any]]:
    """Version and state of a license from its event payloads (what event sourcing does on load)."""
    state: dict[str, Any] = {}
    for payload in payloads:
        event = msgspec.json.decode(payload)
        if "used_total" in event:
            state["used"] = event["used_total"]
        else:
            state.update(event)
            state["used"] = 0
    return len(payloads), state


# --- raw on PostgreSQL -----------------------------------------------------------------------------

_PG_SELECT_STATE = "SELECT version, state::text FROM tidings_aggregate_state WHERE aggregate_type = %s AND aggregate_id = %s"
_PG_SELECT_STREAM = "SELECT payload::text FROM tidings_journal WHERE stream_id = %s AND stream_version > %s ORDER BY stream_version"
_PG_INSERT_JOURNAL = (
    "INSERT INTO tidings_journal (stream_id, stream_version, event_id, event_type, schema_version, "
    "occurred_at, correlation_id, envelope, payload) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_PG_UPSERT_STATE = (
    "INSERT INTO tidings_aggregate_state (aggregate_type, aggregate_id, version, state) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET version = excluded.version, "
    "state = excluded.state, updated_at = now()"
)
_PG_INSERT_OUTBOX = (
    "INSERT INTO tidings_outbox (event_id, partition, partition_key, topic, event_type, envelope, payload) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s)"
)


def _pg_one_statement(rows: Rows) -> tuple[str, tuple[Any, ...]]:
    """The rows as one INSERT with the others as data-modifying CTEs: one statement, atomic, one round trip."""
    parts = [(_PG_INSERT_JOURNAL, rows.journal)]
    if rows.state is not None:
        parts.append((_PG_UPSERT_STATE, rows.state))
    if rows.outbox is not None:
        parts.append((_PG_INSERT_OUTBOX, rows.outbox))
    *ctes, (last, _) = parts
    sql = "".join(f"{'WITH' if i == 0 else ','} w{i} AS ({text}) " for i, (text, _) in enumerate(ctes)) + last
    return sql, tuple(value for _, values in parts for value in values)


@dataclass
class RawPostgres:
    """Direct psycopg 3: one pooled connection per command; its writes in one transaction, one round trip.

    `method="statement"` sends them as one INSERT with CTEs (the fastest direct way measured here);
    `method="pipeline"` sends BEGIN, three INSERTs and COMMIT in pipeline mode.
    """

    pool: AsyncConnectionPool
    persistence: Persistence
    retries: int
    method: str = "statement"
    conflicts: int = 0
    memory: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)

    async def _write(self, conn: psycopg.AsyncConnection[Any], rows: Rows) -> None:
        if self.method == "statement":
            await conn.execute(*_pg_one_statement(rows))
            return
        # Pipeline mode: BEGIN, the inserts and COMMIT leave in one flight, one round trip.
        async with conn.pipeline(), conn.transaction(), conn.cursor() as cur:
            await cur.execute(_PG_INSERT_JOURNAL, rows.journal)
            if rows.state is not None:
                await cur.execute(_PG_UPSERT_STATE, rows.state)
            if rows.outbox is not None:
                await cur.execute(_PG_INSERT_OUTBOX, rows.outbox)

    async def offer(self, license_id: str, n: int) -> None:
        """Create license `n`."""
        rows, state = offer_rows(license_id, n, self.persistence)
        async with self.pool.connection() as conn:
            await self._write(conn, rows)
        self.memory[license_id] = (1, state)

    async def report(self, license_id: str, n: int) -> None:
        """Read the license, then write the usage rows; a unique violation is a conflict, retried."""
        for attempt in range(self.retries + 1):
            async with self.pool.connection() as conn:
                if self.persistence == "state":
                    cur = await conn.execute(_PG_SELECT_STATE, (AGGREGATE_TYPE, license_id))
                    row = await cur.fetchone()
                    assert row is not None
                    version, state = row[0], msgspec.json.decode(row[1])
                else:
                    cur = await conn.execute(_PG_SELECT_STREAM, (_stream_id(license_id), 0))
                    version, state = fold_stream([r[0] for r in await cur.fetchall()])
                try:
                    await self._write(conn, usage_rows(license_id, n, version, state, self.persistence))
                    return
                except pg_errors.UniqueViolation:
                    if attempt == self.retries:
                        raise
                    self.conflicts += 1

    async def report_insert_only(self, license_id: str, n: int) -> None:
        """Write the usage rows from state kept in memory: no read, no conflict possible."""
        version, state = self.memory[license_id]
        self.memory[license_id] = (version + 1, state)  # claimed before the await, so writers never collide
        async with self.pool.connection() as conn:
            await self._write(conn, usage_rows(license_id, n, version, state, self.persistence))


# --- raw on SQLite ---------------------------------------------------------------------------------

_SQ_SELECT_STATE = "SELECT version, state FROM tidings_aggregate_state WHERE aggregate_type = ? AND aggregate_id = ?"
_SQ_SELECT_STREAM = "SELECT payload FROM tidings_journal WHERE stream_id = ? AND stream_version > ? ORDER BY stream_version"
_SQ_INSERT_JOURNAL = _PG_INSERT_JOURNAL.replace("%s", "?")
_SQ_UPSERT_STATE = (
    "INSERT INTO tidings_aggregate_state (aggregate_type, aggregate_id, version, state) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET version = excluded.version, "
    "state = excluded.state, updated_at = strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')"
)
_SQ_INSERT_OUTBOX = _PG_INSERT_OUTBOX.replace("%s", "?")


#: Connection settings copied from the store's connection to raw's.
SQLITE_PRAGMAS = ("journal_mode", "synchronous", "foreign_keys", "wal_autocheckpoint", "cache_size")


@dataclass
class RawSqlite:
    """Direct stdlib sqlite3 on one connection with the store's settings, one BEGIN IMMEDIATE per command."""

    conn: sqlite3.Connection
    persistence: Persistence
    retries: int
    conflicts: int = 0
    memory: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)

    @classmethod
    def connect(cls, path: str, pragmas: dict[str, Any], persistence: Persistence, retries: int) -> RawSqlite:
        """Open `path` with the same connection settings as tidings' SqliteStore (`pragmas` read from it)."""
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0.0, cached_statements=256)
        for name, value in pragmas.items():
            conn.execute(f"PRAGMA {name} = {value}")
        return cls(conn, persistence, retries)

    def _write(self, rows: Rows) -> None:
        conn = self.conn
        journal = rows.journal
        conn.execute("BEGIN IMMEDIATE")
        try:
            # SQLite stores the timestamp as ISO text, as SqliteStore does.
            conn.execute(_SQ_INSERT_JOURNAL, (*journal[:5], journal[5].isoformat(), *journal[6:]))
            if rows.state is not None:
                conn.execute(_SQ_UPSERT_STATE, rows.state)
            if rows.outbox is not None:
                conn.execute(_SQ_INSERT_OUTBOX, rows.outbox)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def offer(self, license_id: str, n: int) -> None:
        """Create license `n`."""
        rows, state = offer_rows(license_id, n, self.persistence)
        self._write(rows)
        self.memory[license_id] = (1, state)

    async def report(self, license_id: str, n: int) -> None:
        """Read the license, then write the usage rows; a unique violation is a conflict, retried."""
        for attempt in range(self.retries + 1):
            if self.persistence == "state":
                row = self.conn.execute(_SQ_SELECT_STATE, (AGGREGATE_TYPE, license_id)).fetchone()
                version, state = row[0], msgspec.json.decode(row[1])
            else:
                rows = self.conn.execute(_SQ_SELECT_STREAM, (_stream_id(license_id), 0)).fetchall()
                version, state = fold_stream([r[0] for r in rows])
            try:
                self._write(usage_rows(license_id, n, version, state, self.persistence))
                return
            except sqlite3.IntegrityError:
                if attempt == self.retries:
                    raise
                self.conflicts += 1

    async def report_insert_only(self, license_id: str, n: int) -> None:
        """Write the usage rows from state kept in memory: no read."""
        version, state = self.memory[license_id]
        self.memory[license_id] = (version + 1, state)
        self._write(usage_rows(license_id, n, version, state, self.persistence))


# --- the limit: pgbench, the server's own C client, running the same statement -------------------

#: Where Debian's PostgreSQL 15 puts pgbench (not on PATH); PATH is tried first.
PGBENCH_FALLBACK = "/usr/lib/postgresql/15/bin/pgbench"


def find_pgbench() -> str | None:
    """The pgbench executable, or None when it is not installed."""
    found = shutil.which("pgbench")
    if found:
        return found
    return PGBENCH_FALLBACK if os.access(PGBENCH_FALLBACK, os.X_OK) else None


def _literal(value: Any) -> str:
    """`value` as an SQL literal for the pgbench script."""
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def pgbench_script(persistence: Persistence) -> str:
    """A pgbench script: raw insert-only's statement per transaction, on a per-client stream whose version counts up.

    The JSON is one sample of the rows raw writes (same sizes); ids that must be unique come from
    gen_random_uuid(); the version is a per-client variable (`-D v=1`), so no two clients collide.
    """
    sample = license_ids(1)[0]
    _, state = offer_rows(sample, 0, persistence)
    rows = usage_rows(sample, 1, 1, state, persistence)
    j, o = rows.journal, rows.outbox
    assert o is not None
    journal = (
        f"INSERT INTO tidings_journal (stream_id, stream_version, event_id, event_type, schema_version, occurred_at, "
        f"correlation_id, envelope, payload) VALUES ('{AGGREGATE_TYPE}:pgbench-' || :client_id, :v, gen_random_uuid(), "
        f"{_literal(j[3])}, 1, now(), {_literal(j[6])}, {_literal(j[7])}, {_literal(j[8])})"
    )
    outbox = (
        "INSERT INTO tidings_outbox (event_id, partition, partition_key, topic, event_type, envelope, payload) "
        f"VALUES (gen_random_uuid(), {o[1]}, {_literal(o[2])}, {_literal(o[3])}, {_literal(o[4])}, {_literal(o[5])}, {_literal(o[6])})"
    )
    parts = [journal]
    if rows.state is not None:
        parts.append(
            "INSERT INTO tidings_aggregate_state (aggregate_type, aggregate_id, version, state) "
            f"VALUES ({_literal(AGGREGATE_TYPE)}, 'pgbench-' || :client_id, :v, {_literal(rows.state[3])}) "
            "ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET version = excluded.version, "
            "state = excluded.state, updated_at = now()"
        )
    parts.append(outbox)
    *ctes, last = parts
    sql = "".join(f"{'WITH' if i == 0 else ','} w{i} AS ({text}) " for i, text in enumerate(ctes)) + last
    return f"{sql};\n\\set v :v + 1\n"


_TPS = re.compile(r"number of transactions actually processed: (\d+)")


@dataclass
class Pgbench:
    """Runs the pgbench script against the limit's schema; keeps each client's version counter across rounds."""

    executable: str
    database_url: str
    schema: str
    script: str
    clients: int
    done_per_client: int = 0

    def run(self, transactions: int) -> tuple[int, float]:
        """Run `transactions` (rounded down to a multiple of the clients); returns (transactions done, wall seconds)."""
        per_client = max(1, transactions // self.clients)
        env = {**os.environ, "PGOPTIONS": f"-c search_path={self.schema}"}
        command = [
            self.executable, "--no-vacuum", "-n", "-c", str(self.clients), "-j", str(min(self.clients, os.cpu_count() or 1)),
            "-t", str(per_client), "-D", f"v={self.done_per_client + 1}", "-f", self.script, self.database_url,
        ]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        found = _TPS.search(done.stdout)
        if done.returncode != 0 or found is None:
            raise SystemExit(f"bench write: pgbench failed ({done.returncode}): {(done.stderr or done.stdout)[-800:]}")
        self.done_per_client += per_client
        return int(found.group(1)), seconds


def check_limit_rows(expected: int, facts: dict[str, Any]) -> None:
    """Fail the benchmark when pgbench did not write one journal and one outbox row per transaction it reported."""
    problems = [f"{facts[k]:,} {k.replace('_', ' ')}" for k in ("journal_rows", "outbox_rows") if facts[k] != expected]
    if problems:
        raise SystemExit(f"bench write: the pgbench limit reported {expected:,} transactions but wrote {', '.join(problems)}")


# --- databases ------------------------------------------------------------------------------------


@dataclass
class Databases:
    """The three fresh databases of one run and how to inspect and remove them."""

    ours: Store
    raw: RawPostgres | RawSqlite
    insert_only: RawPostgres | RawSqlite
    limit: Pgbench | None
    describe: str
    inspect: Callable[[str], Awaitable[dict[str, Any]]]
    cleanup: Callable[[], Awaitable[None]]


_LABELS = ("ours", "raw", "insert_only", "limit")


async def _open_sqlite(args: argparse.Namespace) -> Databases:
    directory = tempfile.mkdtemp(prefix="tidings-bench-write-")
    paths = {label: os.path.join(directory, f"{label}.db") for label in _LABELS[:3]}
    ours = await open_store(f"sqlite:///{paths['ours']}")
    for label in ("raw", "insert_only"):
        # tidings' own migration creates the raw contenders' tables, so the DDL is identical.
        await (await open_store(f"sqlite:///{paths[label]}")).close()
    # Raw runs with whatever the store sets (WAL, synchronous, checkpoint interval, cache), read back from it.
    pragmas = {name: ours.execute(f"PRAGMA {name}")[0][0] for name in SQLITE_PRAGMAS}  # type: ignore[attr-defined]
    raw = RawSqlite.connect(paths["raw"], pragmas, args.persistence, args.retries)
    insert_only = RawSqlite.connect(paths["insert_only"], pragmas, args.persistence, args.retries)

    async def inspect(label: str) -> dict[str, Any]:
        conn = sqlite3.connect(paths[label])
        try:
            return _row_facts([conn.execute(sql).fetchone() for sql in _fact_queries("length({})")])
        finally:
            conn.close()

    async def cleanup() -> None:
        await ours.close()
        raw.conn.close()
        insert_only.conn.close()
        shutil.rmtree(directory, ignore_errors=True)

    settings = ", ".join(f"{name}={value}" for name, value in pragmas.items())
    return Databases(ours, raw, insert_only, None, f"sqlite temp files in {directory} (removed); {settings}", inspect, cleanup)


async def _open_postgres(args: argparse.Namespace) -> Databases:
    tag = new_id().replace("-", "")[-10:]
    schemas = {label: f"bench_write_{tag}_{label}" for label in _LABELS}
    n = args.concurrency
    ours = await open_store(args.database_url, schema=schemas["ours"], migrate=True, min_size=n, max_size=n)
    pools: list[AsyncConnectionPool] = []
    raws: dict[str, RawPostgres] = {}
    for label in ("raw", "insert_only"):
        await (await open_store(args.database_url, schema=schemas[label], migrate=True)).close()
        pool = AsyncConnectionPool(
            args.database_url,
            min_size=n,
            max_size=n,
            kwargs={"autocommit": True, "options": f"-c search_path={schemas[label]}"},
            open=False,
        )
        await pool.open(wait=True, timeout=10)
        pools.append(pool)
        raws[label] = RawPostgres(pool, args.persistence, args.retries, args.raw_write)

    limit = None
    pgbench = find_pgbench()
    script_dir = tempfile.mkdtemp(prefix="tidings-bench-write-pgbench-")
    if pgbench is not None:
        await (await open_store(args.database_url, schema=schemas["limit"], migrate=True)).close()
        script = os.path.join(script_dir, "write.sql")
        with open(script, "w") as out:
            out.write(pgbench_script(args.persistence))
        limit = Pgbench(pgbench, args.database_url, schemas["limit"], script, n)

    async def inspect(label: str) -> dict[str, Any]:
        async with await psycopg.AsyncConnection.connect(
            args.database_url, autocommit=True, options=f"-c search_path={schemas[label]}"
        ) as conn:
            found = [await (await conn.execute(sql)).fetchone() for sql in _fact_queries("octet_length({}::text)")]
            return _row_facts(found)

    async def cleanup() -> None:
        await ours.close()
        for pool in pools:
            await pool.close()
        async with await psycopg.AsyncConnection.connect(args.database_url, autocommit=True) as conn:
            for schema in schemas.values():
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        shutil.rmtree(script_dir, ignore_errors=True)

    return Databases(
        ours, raws["raw"], raws["insert_only"], limit, f"postgresql schemas {', '.join(schemas.values())} (dropped)", inspect, cleanup
    )


def _fact_queries(length: str) -> list[str]:
    """Row counts and average JSON sizes of the journal, the outbox and the state rows."""
    env, pay, state = length.format("envelope"), length.format("payload"), length.format("state")
    return [
        f"SELECT count(*), avg({env}), avg({pay}) FROM tidings_journal",
        f"SELECT count(*), avg({env}), avg({pay}) FROM tidings_outbox",
        f"SELECT count(*), avg({state}) FROM tidings_aggregate_state",
    ]


def _row_facts(found: list[Any]) -> dict[str, Any]:
    """Row counts and average JSON sizes, to show the contenders wrote the same thing."""
    journal, outbox, state = found

    def avg(value: Any) -> float | None:
        return None if value is None else round(float(value), 1)

    return {
        "journal_rows": journal[0],
        "journal_envelope_bytes": avg(journal[1]),
        "journal_payload_bytes": avg(journal[2]),
        "outbox_rows": outbox[0],
        "outbox_envelope_bytes": avg(outbox[1]),
        "outbox_payload_bytes": avg(outbox[2]),
        "state_rows": state[0],
        "state_bytes": avg(state[1]),
    }


# --- the run ---------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Pre-create the licenses, then time ours, raw and raw insert-only in alternating rounds."""
    if args.concurrency < 1 or args.commands < 1 or args.aggregates < 1 or args.rounds < 1:
        raise SystemExit("--concurrency, --commands, --aggregates and --rounds must be positive")
    # Every task gets a total: the harness's bar text formats it as a number.
    with progress.task("opening fresh databases", total=1):
        dbs = await (_open_postgres(args) if args.store == "postgresql" else _open_sqlite(args))
    try:
        return await _measure(args, progress, dbs)
    finally:
        await dbs.cleanup()


async def _measure(args: argparse.Namespace, progress: Progress, dbs: Databases) -> dict[str, Any]:
    if args.personal:
        os.environ.setdefault(MASTER_KEY_ENV, MasterKey.generate())
    workload = Workload.build(dbs.ours, args.persistence, personal=args.personal)
    ids = license_ids(args.aggregates)
    warmup = min(500, max(args.commands // 10, 1))
    plan = command_plan(args.aggregates, warmup + args.commands)
    n = args.concurrency

    async def ours_offer(i: int) -> None:
        await workload.offer(offer_command(ids[i], i))

    async def ours_report(j: int) -> None:
        await workload.report(usage_command(ids[plan[j]], j), args.retries)

    async def raw_report(j: int) -> None:
        await dbs.raw.report(ids[plan[j]], j)

    async def insert_only_report(j: int) -> None:
        await dbs.insert_only.report_insert_only(ids[plan[j]], j)

    contenders: dict[str, Callable[[int], Awaitable[object]]] = {
        "ours": ours_report,
        "raw": raw_report,
        "raw_insert_only": insert_only_report,
    }

    with progress.task("pre-creating licenses", total=3 * args.aggregates):
        everyone = range(args.aggregates)
        await drive(ours_offer, everyone, n, progress.advance)
        await drive(lambda i: dbs.raw.offer(ids[i], i), everyone, n, progress.advance)
        await drive(lambda i: dbs.insert_only.offer(ids[i], i), everyone, n, progress.advance)

    limit = dbs.limit
    limit_done, limit_seconds, limit_expected = 0, 0.0, 0
    with progress.task("warming up", total=3 * warmup):
        for op in contenders.values():
            await drive(op, range(warmup), n, progress.advance)
        if limit is not None:
            warm_done, _ = limit.run(warmup)
            limit_expected += warm_done

    profiler = cProfile.Profile() if args.profile else None
    measured = {label: Driven() for label in contenders}
    cpu = dict.fromkeys(contenders, 0.0)
    labels = [*contenders, *(["limit"] if limit is not None else [])]
    jobs = list(range(warmup, warmup + args.commands))
    chunk = -(-len(jobs) // args.rounds)
    runs_before = workload.handler_runs
    for r in range(args.rounds):
        part = jobs[r * chunk : (r + 1) * chunk]
        # Alternate the order so neither side always runs right after the other's checkpoints.
        order = labels if r % 2 == 0 else list(reversed(labels))
        for label in order:
            with progress.task(f"round {r + 1}/{args.rounds}: {label}", total=len(part)):
                if label == "limit":
                    assert limit is not None
                    done, seconds = limit.run(len(part))  # blocks the loop: nothing else runs meanwhile
                    limit_done, limit_seconds, limit_expected = limit_done + done, limit_seconds + seconds, limit_expected + done
                    continue
                if label == "ours" and profiler is not None:
                    profiler.enable()
                cpu_start = time.process_time()
                measured[label].add(await drive(contenders[label], part, n, progress.advance))
                cpu[label] += time.process_time() - cpu_start
                if label == "ours" and profiler is not None:
                    profiler.disable()
    if profiler is not None:
        profiler.dump_stats(args.profile)
        progress.log(f"cProfile stats of ours written to {args.profile}")

    ours_conflicts = workload.handler_runs - runs_before - args.commands
    with progress.task("checking rows", total=1):
        rows = {"ours": await dbs.inspect("ours"), "raw": await dbs.inspect("raw"), "raw_insert_only": await dbs.inspect("insert_only")}
        if limit is not None:
            rows["limit"] = await dbs.inspect("limit")
            check_limit_rows(limit_expected, rows["limit"])
    limit_rate = limit_done / limit_seconds if limit_seconds else None

    ours, raw, insert_only = measured["ours"], measured["raw"], measured["raw_insert_only"]
    ours_lat, raw_lat, ins_lat = (latency_summary(d.latencies) for d in (ours, raw, insert_only))
    state_part = "state upsert + " if args.persistence == "state" else ""
    load_part = "SELECT of the state row" if args.persistence == "state" else "SELECT of the stream, folded"
    if args.store == "postgresql":
        how = {"statement": "as one INSERT with CTEs (one statement, one round trip)",
               "pipeline": "as BEGIN, INSERTs, COMMIT in pipeline mode (one round trip)"}[args.raw_write]
        ours_how = "as one INSERT with CTEs (PostgresStore.commit)"
        conn_word = f"a pooled connection per command (pool of {n})"
    else:
        how = ours_how = "in one BEGIN IMMEDIATE transaction"
        conn_word = "one connection"
    return {
        "name": NAME,
        "units": "commands/s",
        "ours": round(ours.rate, 1),
        "raw": round(raw.rate, 1),
        "ratio": round(ours.rate / raw.rate, 3),
        "p50_ms": ours_lat["p50_ms"],
        "p99_ms": ours_lat["p99_ms"],
        "raw_p50_ms": raw_lat["p50_ms"],
        "raw_p99_ms": raw_lat["p99_ms"],
        "cpu_us_per_command": round(cpu["ours"] / len(ours.latencies) * 1e6, 1),
        "raw_cpu_us_per_command": round(cpu["raw"] / len(raw.latencies) * 1e6, 1),
        "raw_insert_only_cpu_us_per_command": round(cpu["raw_insert_only"] / len(insert_only.latencies) * 1e6, 1),
        "limit": round(limit_rate, 1) if limit_rate else None,
        "ratio_limit": round(ours.rate / limit_rate, 3) if limit_rate else None,
        "limit_does": (
            f"pgbench ({limit.executable}, {n} clients, the server's C client) running raw insert-only's statement "
            "from a script file (journal + state upsert + outbox, JSON of the same sizes), no read"
            if limit is not None else "pgbench not installed, or --store sqlite: no limit contender"
        ),
        "raw_insert_only": round(insert_only.rate, 1),
        "ratio_vs_insert_only": round(ours.rate / insert_only.rate, 3),
        "raw_insert_only_p50_ms": ins_lat["p50_ms"],
        "raw_insert_only_p99_ms": ins_lat["p99_ms"],
        "store": args.store,
        "persistence": args.persistence,
        "personal": args.personal,
        "concurrency": n,
        "commands": args.commands,
        "aggregates": args.aggregates,
        "rounds": args.rounds,
        "warmup_commands": warmup,
        "retries": args.retries,
        "conflicts_retried": ours_conflicts,
        "raw_conflicts_retried": dbs.raw.conflicts,
        "seconds": {label: round(d.seconds, 2) for label, d in measured.items()},
        "ours_does": (
            f"Application.handle: {load_part}, record 1 event, translate to 1 integration event, "
            f"write journal + {state_part}outbox {ours_how}"
        ),
        "raw_does": f"direct SQL, {conn_word}: {load_part}, then journal + {state_part}outbox {how}",
        "raw_insert_only_does": f"direct SQL: journal + {state_part}outbox {how}; state kept in memory, no read",
        "databases": dbs.describe,
        "rows": rows,
        "versions": {
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "psycopg": psycopg.__version__,
            "psycopg_pool": psycopg_pool.__version__,
        },
        "cpus": os.cpu_count(),
    }
