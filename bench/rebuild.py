"""Events/s of rebuilding a projection from the journal: Projector.rebuild vs the same reads and upserts by hand.

The journal is filled with `--events` licensing events (`--licenses` LicenseOffered, then
UsageReported on random licenses), with envelopes and payloads as tidings writes them, by COPY
(PostgreSQL) or executemany (SQLite).

`ours`: `Projector.rebuild("license_usage")` — a `Projection` with one upsert per event into
`license_usage` (one row per license: buyer, allowance, reports, units, last channel): create the
fresh table, read the journal in batches (gap-checked), decode envelope and payload, run the
handlers, write the batch's upserts and the checkpoint in one transaction, swap the table in,
catch up.

`raw`: the same work hand-written with the same driver, as fast as we could make it: create the
table, read the same batches (decoding just the two envelope fields it needs; PostgreSQL: the
next batch read on a second connection while the last is written), the same upserts — PostgreSQL: one
`INSERT … SELECT … FROM jsonb_array_elements(rows) ON CONFLICT` per wave of distinct keys (the
best batching measured: psycopg's executemany costs ~25 µs of client CPU per row here, binary
unnest arrays ~3.5, one JSON parameter ~0.8), SQLite: executemany — plus the checkpoint row, one
transaction per batch, and the rename at the end.

Contenders alternate rounds on the same journal; both final tables are compared row for row.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import platform
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg

from bench.harness import Progress
from bench.workload import CHANNELS, LicenseOffered, UsageReported
from tidings.messaging import Envelope, MessageRegistry, new_id
from tidings.runtime import Projection, Projector, handles
from tidings.store import Store, open_store

__all__ = ["NAME", "add_arguments", "run", "LicenseUsage"]

NAME = "rebuild"

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"

_UPSERT_OFFERED = (
    "INSERT INTO {t} (license_id, buyer_id, allowance, reports, units, used_total, updated_at) "
    "VALUES (?, ?, ?, 0, 0, 0, ?) ON CONFLICT (license_id) DO UPDATE SET buyer_id = excluded.buyer_id, "
    "allowance = excluded.allowance, updated_at = excluded.updated_at"
)
_UPSERT_USED = (
    "INSERT INTO {t} (license_id, reports, units, used_total, last_channel, updated_at) "
    "VALUES (?, 1, ?, ?, ?, ?) ON CONFLICT (license_id) DO UPDATE SET reports = {t}.reports + 1, "
    "units = {t}.units + excluded.units, used_total = excluded.used_total, "
    "last_channel = excluded.last_channel, updated_at = excluded.updated_at"
)
_DDL = {
    "postgresql": (
        "CREATE TABLE {t} (license_id TEXT PRIMARY KEY, buyer_id TEXT, allowance INTEGER, reports INTEGER NOT NULL, "
        "units BIGINT NOT NULL, used_total BIGINT NOT NULL, last_channel TEXT, updated_at TIMESTAMPTZ NOT NULL)"
    ),
    "sqlite": (
        "CREATE TABLE {t} (license_id TEXT PRIMARY KEY, buyer_id TEXT, allowance INTEGER, reports INTEGER NOT NULL, "
        "units INTEGER NOT NULL, used_total INTEGER NOT NULL, last_channel TEXT, updated_at TEXT NOT NULL)"
    ),
}


class LicenseUsage(Projection, name="license_usage"):
    """One row per license: who bought it, its allowance, how often and how much it was used."""

    tables = {"license_usage": {dialect: ddl.format(t="{license_usage}") for dialect, ddl in _DDL.items()}}
    OFFERED = _UPSERT_OFFERED.format(t="{license_usage}")
    USED = _UPSERT_USED.format(t="{license_usage}")

    @handles
    def offered(self, event: LicenseOffered, envelope: Envelope) -> None:
        self.execute(self.OFFERED, (envelope.aggregate_id, event.buyer_id, event.allowance, envelope.occurred_at))

    @handles
    def used(self, event: UsageReported, envelope: Envelope) -> None:
        self.execute(self.USED, (envelope.aggregate_id, event.units, event.used_total, event.channel, envelope.occurred_at))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the rebuild benchmark."""
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite", help="database (default sqlite)")
    parser.add_argument("--events", type=int, default=200_000, help="journal events to rebuild from (default 200000)")
    parser.add_argument("--licenses", type=int, default=0, help="licenses the events spread over (default events/20)")
    parser.add_argument("--batch-size", type=int, default=5_000, help="events per rebuild transaction (default 5000)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rebuilds per contender (default 2)")
    parser.add_argument("--database-url", default=DEFAULT_POSTGRES_URL, help="PostgreSQL server for --store postgresql")
    parser.add_argument("--profile", metavar="FILE", help="write cProfile stats of ours' rebuilds to FILE")


# --- the journal --------------------------------------------------------------------------------


_encode = msgspec.json.encode


def journal_rows(events: int, licenses: int, seed: int = 7) -> Any:
    """The journal's rows: each license offered once, then usage reported on random licenses."""
    rng = random.Random(seed)
    versions: dict[int, int] = {}
    used: dict[int, int] = {}
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(events):
        n = i if i < licenses else rng.randrange(licenses)
        license_id = f"lic-{n:07d}"
        version = versions[n] = versions.get(n, 0) + 1
        event_id = new_id()
        occurred = start + timedelta(milliseconds=i)
        if version == 1:
            event: Any = LicenseOffered(
                asset_id=f"asset-{n}", buyer_id=f"buyer-{n % 977}", allowance=100, price_cents=1999, currency="EUR"
            )
        else:
            units = rng.randint(1, 9)
            used[n] = used.get(n, 0) + units
            event = UsageReported(units=units, channel=CHANNELS[n % len(CHANNELS)], reported_by="api", used_total=used[n])
        envelope = Envelope(
            event_id=event_id, event_type=event.message_name, schema_version=1, occurred_at=occurred,
            aggregate_type="License", aggregate_id=license_id, aggregate_version=version,
            correlation_id=event_id, causation_id=event_id, source="licensing",
        )
        yield (
            f"License:{license_id}", version, event_id, event.message_name, 1, occurred, event_id,
            _encode(envelope).decode(), _encode(event).decode(),
        )


_COLUMNS = "stream_id, stream_version, event_id, event_type, schema_version, occurred_at, correlation_id, envelope, payload"


async def fill_postgres(url: str, schema: str, args: argparse.Namespace, progress: Progress) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True, options=f"-c search_path={schema}") as conn:
        with progress.task(f"filling the journal (COPY, {args.events:,} events)", total=args.events):
            async with conn.cursor() as cur, cur.copy(f"COPY tidings_journal ({_COLUMNS}) FROM STDIN") as copy:
                for i, row in enumerate(journal_rows(args.events, args.licenses)):
                    await copy.write_row(row)
                    if i % 2000 == 1999:
                        progress.advance(2000)
        await conn.execute("VACUUM ANALYZE tidings_journal")


def fill_sqlite(path: str, args: argparse.Namespace, progress: Progress) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    insert = f"INSERT INTO tidings_journal ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    with progress.task(f"filling the journal (executemany, {args.events:,} events)", total=args.events):
        chunk: list[tuple[Any, ...]] = []
        for row in journal_rows(args.events, args.licenses):
            chunk.append((*row[:5], row[5].isoformat(), *row[6:]))
            if len(chunk) == 10_000:
                conn.execute("BEGIN")
                conn.executemany(insert, chunk)
                conn.execute("COMMIT")
                progress.advance(len(chunk))
                chunk = []
        if chunk:
            conn.execute("BEGIN")
            conn.executemany(insert, chunk)
            conn.execute("COMMIT")
            progress.advance(len(chunk))
    conn.close()


# --- raw: the same reads and upserts by hand ------------------------------------------------------


class _EnvelopeFields(msgspec.Struct):
    aggregate_id: str
    occurred_at: datetime


_envelope_fields = msgspec.json.Decoder(_EnvelopeFields)
_offered = msgspec.json.Decoder(LicenseOffered)
_used = msgspec.json.Decoder(UsageReported)
_RAW_TYPES = (LicenseOffered.message_name, UsageReported.message_name)
_SELECT = (
    "SELECT position, event_type, schema_version, CASE WHEN event_type IN ({m}, {m}) THEN envelope{cast} END, "
    "CASE WHEN event_type IN ({m}, {m}) THEN payload{cast} END FROM tidings_journal WHERE position > {m} "
    "ORDER BY position LIMIT {m}"
)
_SQLITE_SELECT = _SELECT.format(m="?", cast="")
_POSTGRES_SELECT = _SELECT.format(m="%s", cast="::text")


def _runs(rows: list[tuple[int, str, Any, Any]]) -> list[tuple[str, list[Any]]]:
    """(position, type, envelope fields, payload) rows as runs of (statement kind, parameter rows)."""
    runs: list[tuple[str, list[Any]]] = []
    for _position, event_type, env, payload in rows:
        if env is None:
            continue
        if event_type == _RAW_TYPES[1]:
            used = _used.decode(payload)
            row: Any = (env.aggregate_id, used.units, used.used_total, used.channel, env.occurred_at)
            kind = "used"
        else:
            offered = _offered.decode(payload)
            row = (env.aggregate_id, offered.buyer_id, offered.allowance, env.occurred_at)
            kind = "offered"
        if runs and runs[-1][0] == kind:
            runs[-1][1].append(row)
        else:
            runs.append((kind, [row]))
    return runs


def _waves(rows: list[Any]) -> list[list[Any]]:
    waves: list[list[Any]] = [[]]
    seen: dict[str, int] = {}
    for row in rows:
        w = seen.get(row[0], 0)
        seen[row[0]] = w + 1
        if w == len(waves):
            waves.append([])
        waves[w].append(row)
    return waves


# All rows of a wave in one JSON parameter: ~0.8 µs of client CPU per row (binary arrays ~3.5,
# executemany ~25), and the server's cost is the same.
_PG_UPSERT = {
    "offered": (
        "INSERT INTO {t} (license_id, buyer_id, allowance, reports, units, used_total, updated_at) "
        "SELECT r->>0, r->>1, (r->>2)::integer, 0, 0, 0, (r->>3)::timestamptz FROM jsonb_array_elements(%s::jsonb) AS r "
        "ON CONFLICT (license_id) DO UPDATE SET buyer_id = excluded.buyer_id, allowance = excluded.allowance, "
        "updated_at = excluded.updated_at"
    ),
    "used": (
        "INSERT INTO {t} (license_id, reports, units, used_total, last_channel, updated_at) "
        "SELECT r->>0, 1, (r->>1)::bigint, (r->>2)::bigint, r->>3, (r->>4)::timestamptz "
        "FROM jsonb_array_elements(%s::jsonb) AS r ON CONFLICT (license_id) DO UPDATE SET reports = {t}.reports + 1, "
        "units = {t}.units + excluded.units, used_total = excluded.used_total, last_channel = excluded.last_channel, "
        "updated_at = excluded.updated_at"
    ),
}
_json = msgspec.json.Encoder()


async def raw_postgres(url: str, schema: str, batch: int, progress: Progress, total: int) -> int:
    """Rebuild raw_usage by hand with psycopg, reading the next batch while the last one is written."""
    table, fresh = "raw_usage", "raw_usage__fresh"
    statements = {kind: sql.format(t=fresh) for kind, sql in _PG_UPSERT.items()}
    applied = 0
    options = f"-c search_path={schema}"
    async with (
        await psycopg.AsyncConnection.connect(url, autocommit=True, options=options) as conn,
        await psycopg.AsyncConnection.connect(url, autocommit=True, options=options) as reader,
    ):
        await conn.execute(f"DROP TABLE IF EXISTS {fresh}")
        await conn.execute(_DDL["postgresql"].format(t=fresh))
        await conn.execute(
            "INSERT INTO tidings_checkpoints (name, position) VALUES ('raw_usage', 0) "
            "ON CONFLICT (name) DO UPDATE SET position = 0"
        )

        async def read(after: int) -> list[tuple[int, str, Any, Any]]:
            cur = await reader.execute(_POSTGRES_SELECT, (*_RAW_TYPES, *_RAW_TYPES, after, batch))
            return [
                (p, t, None if e is None else _envelope_fields.decode(e), pl) for p, t, _v, e, pl in await cur.fetchall()
            ]

        next_read = asyncio.ensure_future(read(0))
        while True:
            rows = await next_read
            if not rows:
                break
            after = rows[-1][0]
            next_read = asyncio.ensure_future(read(after))
            runs = _runs(rows)
            async with conn.transaction():
                await conn.execute("SET LOCAL synchronous_commit = off")
                for kind, params in runs:
                    for wave in _waves(params):
                        await conn.execute(statements[kind], (_json.encode(wave).decode(),))
                    applied += len(params)
                await conn.execute("UPDATE tidings_checkpoints SET position = %s WHERE name = 'raw_usage'", (after,))
            progress.advance(len(rows))
        async with conn.transaction():
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
            await conn.execute(f"ALTER TABLE {fresh} RENAME TO {table}")
            await conn.execute(f"ALTER INDEX {fresh}_pkey RENAME TO {table}_pkey")
    return applied


def raw_sqlite(path: str, batch: int, progress: Progress) -> int:
    """Rebuild raw_usage by hand with sqlite3 (the store's pragmas); the number of events applied."""
    table, fresh = "raw_usage", "raw_usage__fresh"
    statements = {
        "offered": _UPSERT_OFFERED.format(t=fresh),
        "used": _UPSERT_USED.format(t=fresh),
    }
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode = WAL", "synchronous = NORMAL", "wal_autocheckpoint = 10000", "cache_size = -65536"):
        conn.execute(f"PRAGMA {pragma}")
    applied = 0
    try:
        conn.execute(f"DROP TABLE IF EXISTS {fresh}")
        conn.execute(_DDL["sqlite"].format(t=fresh))
        conn.execute(
            "INSERT INTO tidings_checkpoints (name, position) VALUES ('raw_usage', 0) "
            "ON CONFLICT (name) DO UPDATE SET position = 0"
        )
        after = 0
        while True:
            raw = conn.execute(_SQLITE_SELECT, (*_RAW_TYPES, *_RAW_TYPES, after, batch)).fetchall()
            if not raw:
                break
            after = raw[-1][0]
            runs = _runs([(p, t, None if e is None else _envelope_fields.decode(e), pl) for p, t, _v, e, pl in raw])
            conn.execute("BEGIN IMMEDIATE")
            for kind, rows in runs:
                conn.executemany(statements[kind], [(*row[:-1], row[-1].isoformat()) for row in rows])
                applied += len(rows)
            conn.execute("UPDATE tidings_checkpoints SET position = ? WHERE name = 'raw_usage'", (after,))
            conn.execute("COMMIT")
            progress.advance(len(raw))
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"ALTER TABLE {fresh} RENAME TO {table}")
        conn.execute("COMMIT")
    finally:
        conn.close()
    return applied


# --- the run ---------------------------------------------------------------------------------------


@dataclass
class _Setup:
    store: Store
    raw: Callable[[Progress], Awaitable[int]]
    describe: str
    cleanup: Callable[[], Awaitable[None]]


async def _setup(args: argparse.Namespace, progress: Progress) -> _Setup:
    if args.store == "postgresql":
        schema = f"bench_rebuild_{new_id().replace('-', '')[-10:]}"
        store = await open_store(args.database_url, schema=schema, migrate=True)
        await fill_postgres(args.database_url, schema, args, progress)

        async def raw(p: Progress) -> int:
            return await raw_postgres(args.database_url, schema, args.batch_size, p, args.events)

        async def cleanup() -> None:
            await store.drop_schema()  # type: ignore[attr-defined]
            await store.close()

        return _Setup(store, raw, f"postgresql schema {schema} (dropped)", cleanup)
    directory = tempfile.mkdtemp(prefix="tidings-bench-rebuild-")
    path = os.path.join(directory, "journal.db")
    store = await open_store(f"sqlite:///{path}")
    fill_sqlite(path, args, progress)

    async def raw_lite(p: Progress) -> int:
        return raw_sqlite(path, args.batch_size, p)

    async def cleanup_lite() -> None:
        await store.close()
        shutil.rmtree(directory, ignore_errors=True)

    return _Setup(store, raw_lite, f"sqlite temp file {path} (removed)", cleanup_lite)


async def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Fill the journal, then rebuild with ours and raw in alternating rounds."""
    if args.events < 1 or args.rounds < 1 or args.batch_size < 1:
        raise SystemExit("--events, --rounds and --batch-size must be positive")
    args.licenses = args.licenses or max(1, args.events // 20)
    setup = await _setup(args, progress)
    try:
        return await _measure(args, progress, setup)
    finally:
        await setup.cleanup()


async def _measure(args: argparse.Namespace, progress: Progress, setup: _Setup) -> dict[str, Any]:
    store = setup.store
    projector = Projector(store, [LicenseUsage(registry=MessageRegistry())], rebuild_batch_size=args.batch_size)
    await projector.prepare()
    profiler = cProfile.Profile() if args.profile else None
    seconds: dict[str, list[float]] = {"ours": [], "raw": []}
    cpu: dict[str, list[float]] = {"ours": [], "raw": []}
    applied: dict[str, int] = {}
    for r in range(args.rounds):
        order = ["ours", "raw"] if r % 2 == 0 else ["raw", "ours"]
        for label in order:
            with progress.task(f"round {r + 1}/{args.rounds}: {label} rebuild", total=args.events):
                started, cpu_started = time.perf_counter(), time.process_time()
                if label == "ours":
                    done = [0]

                    def advance(p: Any, done: list[int] = done) -> None:
                        progress.advance(p.position - done[0])
                        done[0] = p.position

                    if profiler is not None:
                        profiler.enable()
                    result = await projector.rebuild("license_usage", progress=advance)
                    if profiler is not None:
                        profiler.disable()
                    applied[label] = result.events
                else:
                    applied[label] = await setup.raw(progress)
                seconds[label].append(time.perf_counter() - started)
                cpu[label].append(time.process_time() - cpu_started)
    if profiler is not None:
        profiler.dump_stats(args.profile)
        progress.log(f"cProfile stats of ours written to {args.profile}")

    columns = "license_id, buyer_id, allowance, reports, units, used_total, last_channel"
    ours_rows = await store.fetch(f"SELECT {columns} FROM license_usage ORDER BY license_id")
    raw_rows = await store.fetch(f"SELECT {columns} FROM raw_usage ORDER BY license_id")
    if ours_rows != raw_rows:
        raise SystemExit("ours and raw built different tables: the comparison would be meaningless")
    ours_s, raw_s = statistics.median(seconds["ours"]), statistics.median(seconds["raw"])
    ours_rate, raw_rate = args.events / ours_s, args.events / raw_s
    return {
        "name": NAME,
        "units": "events/s",
        "ours": round(ours_rate),
        "raw": round(raw_rate),
        "ratio": round(ours_rate / raw_rate, 3),
        "goal": 50_000,
        "store": args.store,
        "events": args.events,
        "licenses": args.licenses,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "seconds": {label: [round(s, 2) for s in values] for label, values in seconds.items()},
        # This process's CPU per event (the database server's is not included): where the time goes.
        "client_cpu_us_per_event": {label: round(statistics.median(v) / args.events * 1e6, 1) for label, v in cpu.items()},
        "events_applied": applied,
        "read_model_rows": len(ours_rows),
        "tables_equal": True,
        "ours_does": (
            "Projector.rebuild: fresh table, gap-checked batch reads, decode, @handles upserts sent per key "
            "wave as one JSON parameter, checkpoint in each batch's transaction (next batch prepared meanwhile), swap, catch up"
            if args.store == "postgresql"
            else "Projector.rebuild: fresh table, batch reads, decode, @handles upserts by executemany through the "
            "Store, checkpoint in each batch's transaction, swap, catch up"
        ),
        "raw_does": (
            "psycopg: batch reads (next one prefetched), msgspec decode, INSERT … SELECT FROM "
            "jsonb_array_elements ON CONFLICT per wave, checkpoint, rename"
            if args.store == "postgresql"
            else "sqlite3: same reads, msgspec decode, executemany upserts, checkpoint, rename"
        ),
        "database": setup.describe,
        "versions": {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version, "psycopg": psycopg.__version__},
        "cpus": os.cpu_count(),
    }
