"""Event-sourced commands/s: tidings' Application vs the `eventsourcing` library's, same workload.

Both sides run the same command on the same event-sourced License: load it (select its stream and
replay it), record one `UsageReported` (same fields), save; in alternating rounds, each side in a
fresh database of its own on the same server. Sequential by default (one command at a time); with
`--concurrency N` tidings has N commands in flight on asyncio with N pooled connections and
eventsourcing, being synchronous, runs in N threads with N pooled connections; conflicts are
retried on both sides and counted.

- `ours`: tidings `Application.handle` with an `EventSourcedAggregate`: validate the command,
  select + replay the stream, write one journal row (envelope metadata + payload). The journal is
  also tidings' ordered log for readers (its `position`). No outbox row: the other side has none.
- `ours_with_outbox` (reference): the same plus a translator, so one outbox row is written too.
- `theirs` (`raw` in the result, the reference rate): eventsourcing's `Application`:
  `repository.get` (select + replay), the aggregate method, `save`: one row in its stored-events
  table, which is also its notification log (PostgreSQL: a pipelined transaction taking
  `LOCK TABLE … IN EXCLUSIVE MODE` and sending `NOTIFY`, so readers never skip a gap).

`ratio` = ours / theirs. On SQLite both sides use the same connection settings (tidings' defaults:
WAL, synchronous=NORMAL, checkpoint interval, cache), applied to eventsourcing's connections too,
so neither pays for more durability than the other.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import sqlite3
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing import sqlite as es_sqlite
from eventsourcing.application import Application as EsApplication
from eventsourcing.domain import Aggregate as EsAggregate
from eventsourcing.domain import event as es_event
from eventsourcing.persistence import IntegrityError as EsIntegrityError

from bench.harness import Progress
from bench.workload import (
    Driven,
    OfferLicense,
    ReportUsage,
    Workload,
    command_plan,
    drive,
    latency_summary,
    license_ids,
    offer_command,
    usage_command,
)
from tidings.messaging import new_id
from tidings.store import Store, open_store

NAME = "write-vs-eventsourcing"

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
#: SQLite settings read from tidings' store and applied to eventsourcing's connections as well.
SQLITE_PRAGMAS = ("synchronous", "wal_autocheckpoint", "cache_size")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the comparison."""
    parser.add_argument("--store", choices=["postgresql", "sqlite"], default="postgresql", help="database (default postgresql)")
    parser.add_argument("--commands", type=int, default=5_000, help="measured commands per side (default 5000)")
    parser.add_argument("--aggregates", type=int, default=1_000, help="pre-created licenses the commands spread over")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="commands in flight per side (default 1); above 1 eventsourcing runs in that many threads, as it is synchronous",
    )
    parser.add_argument("--retries", type=int, default=3, help="retries of a command after a concurrency conflict")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds the commands are split into")
    parser.add_argument("--database-url", default=DEFAULT_POSTGRES_URL, help="PostgreSQL server for --store postgresql")


# --- the same domain in the eventsourcing library's style ------------------------------------------


class EsLicense(EsAggregate):
    """The License as an eventsourcing aggregate: decorated methods record and apply events."""

    @es_event("Offered")
    def __init__(self, id: UUID, asset_id: str, buyer_id: str, allowance: int, price_cents: int, currency: str) -> None:  # noqa: A002
        # An `id` parameter is how the library takes a given id; it is stored as the originator id.
        self.asset_id = asset_id
        self.buyer_id = buyer_id
        self.allowance = allowance
        self.price_cents = price_cents
        self.currency = currency
        self.used = 0

    def report_usage(self, units: int, channel: str, reported_by: str) -> None:
        """Record one usage report carrying the running total, as tidings' License does."""
        self._usage_reported(units=units, channel=channel, reported_by=reported_by, used_total=self.used + units)

    @es_event("UsageReported")
    def _usage_reported(self, units: int, channel: str, reported_by: str, used_total: int) -> None:
        self.used = used_total


class EsLicensing(EsApplication[UUID]):
    """The eventsourcing Application with the two commands."""

    def offer(self, command: OfferLicense) -> None:
        """Create a license with the given id."""
        self.save(
            EsLicense(
                id=UUID(command.license_id),
                asset_id=command.asset_id,
                buyer_id=command.buyer_id,
                allowance=command.allowance,
                price_cents=command.price_cents,
                currency=command.currency,
            )
        )

    def report_usage(self, command: ReportUsage) -> None:
        """Load the license, record the usage, save."""
        license_ = self.repository.get(UUID(command.license_id))
        license_.report_usage(command.units, command.channel, command.reported_by)
        self.save(license_)


@contextlib.contextmanager
def _es_sqlite_settings(pragmas: dict[str, Any]) -> Iterator[None]:
    """Apply `pragmas` to every SQLite connection eventsourcing opens (it has no setting for them)."""
    original = es_sqlite.SQLiteConnectionPool._create_connection

    def create_connection(self: es_sqlite.SQLiteConnectionPool) -> es_sqlite.SQLiteConnection:
        conn = original(self)
        for name, value in pragmas.items():
            conn._sqlite_conn.execute(f"PRAGMA {name} = {value}")
        return conn

    es_sqlite.SQLiteConnectionPool._create_connection = create_connection  # type: ignore[method-assign]
    try:
        yield
    finally:
        es_sqlite.SQLiteConnectionPool._create_connection = original  # type: ignore[method-assign]


# --- the run ---------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Open three fresh databases, pre-create the licenses on each, then time the sides in rounds."""
    if args.commands < 1 or args.aggregates < 1 or args.rounds < 1 or args.concurrency < 1:
        raise SystemExit("--commands, --aggregates, --rounds and --concurrency must be positive")
    cleanups: list[Callable[[], Awaitable[None]]] = []
    with contextlib.ExitStack() as stack:
        try:
            with progress.task("opening fresh databases", total=1):
                if args.store == "postgresql":
                    stores, theirs, describe = await _open_postgres(args, cleanups)
                else:
                    stores, theirs, describe = await _open_sqlite(args, cleanups, stack)
            return await _measure(args, progress, stores, theirs, describe)
        finally:
            for cleanup in reversed(cleanups):
                await cleanup()


async def _open_postgres(
    args: argparse.Namespace, cleanups: list[Callable[[], Awaitable[None]]]
) -> tuple[dict[str, Store], EsLicensing, str]:
    tag = new_id().replace("-", "")[-10:]
    schemas = {label: f"bench_vs_es_{tag}_{label}" for label in ("ours", "outbox", "theirs")}

    async def drop_schemas() -> None:
        async with await psycopg.AsyncConnection.connect(args.database_url, autocommit=True) as conn:
            for schema in schemas.values():
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    cleanups.append(drop_schemas)
    stores: dict[str, Store] = {}
    for label in ("ours", "outbox"):
        # As many connections as commands in flight, on both sides.
        n = args.concurrency
        store = await open_store(args.database_url, schema=schemas[label], migrate=True, min_size=n, max_size=n)
        stores[label] = store
        cleanups.append(store.close)
    async with await psycopg.AsyncConnection.connect(args.database_url, autocommit=True) as conn:
        await conn.execute(f'CREATE SCHEMA "{schemas["theirs"]}"')
    info = psycopg.conninfo.conninfo_to_dict(args.database_url)
    theirs = EsLicensing(
        env={
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": str(info.get("dbname", "postgres")),
            "POSTGRES_HOST": str(info.get("host", "127.0.0.1")),
            "POSTGRES_PORT": str(info.get("port", 5432)),
            "POSTGRES_USER": str(info.get("user", "postgres")),
            "POSTGRES_PASSWORD": str(info.get("password", "")),
            "POSTGRES_SCHEMA": schemas["theirs"],
            "POSTGRES_POOL_SIZE": str(args.concurrency),
            "POSTGRES_MAX_OVERFLOW": "0",
        }
    )

    async def close_theirs() -> None:
        theirs.close()

    cleanups.append(close_theirs)
    return stores, theirs, f"postgresql schemas {', '.join(schemas.values())} (dropped)"


async def _open_sqlite(
    args: argparse.Namespace, cleanups: list[Callable[[], Awaitable[None]]], stack: contextlib.ExitStack
) -> tuple[dict[str, Store], EsLicensing, str]:
    directory = tempfile.mkdtemp(prefix="tidings-bench-vs-es-")

    async def remove_directory() -> None:
        shutil.rmtree(directory, ignore_errors=True)

    cleanups.append(remove_directory)
    stores: dict[str, Store] = {}
    for label in ("ours", "outbox"):
        store = await open_store(f"sqlite:///{os.path.join(directory, label + '.db')}")
        stores[label] = store
        cleanups.append(store.close)
    pragmas = {name: stores["ours"].execute(f"PRAGMA {name}")[0][0] for name in SQLITE_PRAGMAS}  # type: ignore[attr-defined]
    stack.enter_context(_es_sqlite_settings(pragmas))
    theirs = EsLicensing(
        env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": os.path.join(directory, "theirs.db")}
    )

    async def close_theirs() -> None:
        theirs.close()

    cleanups.append(close_theirs)
    settings = ", ".join(f"{name}={value}" for name, value in pragmas.items())
    return stores, theirs, f"sqlite temp files in {directory} (removed); both sides WAL, {settings}"


async def _measure(
    args: argparse.Namespace, progress: Progress, stores: dict[str, Store], theirs: EsLicensing, describe: str
) -> dict[str, Any]:
    ours_app = Workload.build(stores["ours"], "events", translate=False)
    outbox_app = Workload.build(stores["outbox"], "events", translate=True)
    ids = license_ids(args.aggregates)
    warmup = min(500, max(args.commands // 10, 1))
    plan = command_plan(args.aggregates, warmup + args.commands)

    n = args.concurrency
    # Above one command in flight the synchronous library needs threads; at one, none (no hop to pay).
    executor = ThreadPoolExecutor(n, thread_name_prefix="eventsourcing") if n > 1 else None
    loop = asyncio.get_running_loop()
    their_conflicts = 0

    async def in_their_thread(fn: Callable[[], None]) -> None:
        if executor is None:
            fn()  # sequential run: blocking the loop here delays nothing else
        else:
            await loop.run_in_executor(executor, fn)

    async def theirs_offer(i: int) -> None:
        await in_their_thread(lambda: theirs.offer(offer_command(ids[i], i)))

    async def theirs_report(j: int) -> None:
        nonlocal their_conflicts
        command = usage_command(ids[plan[j]], j)
        for attempt in range(args.retries + 1):
            try:
                await in_their_thread(lambda: theirs.report_usage(command))
                return
            except EsIntegrityError:
                # The library's signal that another writer saved this aggregate first.
                if attempt == args.retries:
                    raise
                their_conflicts += 1

    def ours_offer(workload: Workload) -> Callable[[int], Awaitable[None]]:
        return lambda i: workload.offer(offer_command(ids[i], i))

    def ours_report(workload: Workload) -> Callable[[int], Awaitable[None]]:
        return lambda j: workload.report(usage_command(ids[plan[j]], j), args.retries)

    sides: dict[str, Callable[[int], Awaitable[object]]] = {
        "ours": ours_report(ours_app),
        "ours_with_outbox": ours_report(outbox_app),
        "theirs": theirs_report,
    }
    with progress.task("pre-creating licenses", total=3 * args.aggregates):
        for offer in (ours_offer(ours_app), ours_offer(outbox_app), theirs_offer):
            await drive(offer, range(args.aggregates), n, progress.advance)
    with progress.task("warming up", total=3 * warmup):
        for op in sides.values():
            await drive(op, range(warmup), n, progress.advance)

    runs_before = {label: workload.handler_runs for label, workload in (("ours", ours_app), ("ours_with_outbox", outbox_app))}
    their_conflicts_before = their_conflicts
    measured = {label: Driven() for label in sides}
    jobs = list(range(warmup, warmup + args.commands))
    chunk = -(-len(jobs) // args.rounds)
    for r in range(args.rounds):
        part = jobs[r * chunk : (r + 1) * chunk]
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for label in order:
            with progress.task(f"round {r + 1}/{args.rounds}: {label}", total=len(part)):
                measured[label].add(await drive(sides[label], part, n, progress.advance))
    if executor is not None:
        executor.shutdown()
    conflicts = {
        "ours": ours_app.handler_runs - runs_before["ours"] - args.commands,
        "ours_with_outbox": outbox_app.handler_runs - runs_before["ours_with_outbox"] - args.commands,
        "theirs": their_conflicts - their_conflicts_before,
    }

    with progress.task("checking rows", total=1):
        checks = await _check_rows(args, stores, theirs, warmup)

    ours, with_outbox, them = measured["ours"], measured["ours_with_outbox"], measured["theirs"]
    lat = {label: latency_summary(d.latencies) for label, d in measured.items()}
    store_word = "one INSERT statement" if args.store == "postgresql" else "one BEGIN IMMEDIATE transaction"
    their_save = (
        "one pipelined transaction: SET LOCAL lock_timeout, LOCK TABLE … IN EXCLUSIVE MODE, NOTIFY, INSERT"
        if args.store == "postgresql"
        else "BEGIN, INSERT, COMMIT (its load is BEGIN, SELECT, ROLLBACK)"
    )
    return {
        "name": NAME,
        "units": "commands/s",
        "ours": round(ours.rate, 1),
        "raw": round(them.rate, 1),
        "ratio": round(ours.rate / them.rate, 3),
        "theirs": round(them.rate, 1),
        "ours_with_outbox": round(with_outbox.rate, 1),
        "ratio_with_outbox": round(with_outbox.rate / them.rate, 3),
        "p50_ms": lat["ours"]["p50_ms"],
        "p99_ms": lat["ours"]["p99_ms"],
        "latency_ms": {label: lat[label] for label in measured},
        "store": args.store,
        "concurrency": n,
        "conflicts_retried": conflicts,
        "commands": args.commands,
        "aggregates": args.aggregates,
        "warmup_commands": warmup,
        "rounds": args.rounds,
        "seconds": {label: round(d.seconds, 2) for label, d in measured.items()},
        "ours_does": (
            "tidings Application.handle: validate the command, SELECT the stream and replay it, record 1 event, "
            f"write 1 journal row (envelope metadata + payload; the journal is the ordered log) in {store_word}; no outbox"
        ),
        "ours_with_outbox_does": "the same plus a translator: 1 outbox row in the same statement/transaction",
        "theirs_does": (
            "eventsourcing Application: repository.get (SELECT the stream, replay), aggregate method (1 event), "
            f"save: 1 row in its stored-events table, which is also its notification log; {their_save}"
        ),
        "rows": checks,
        "databases": describe,
        "versions": {
            "python": platform.python_version(),
            "eventsourcing": version("eventsourcing"),
            "psycopg": psycopg.__version__,
            "sqlite": sqlite3.sqlite_version,
        },
        "cpus": os.cpu_count(),
    }


async def _check_rows(args: argparse.Namespace, stores: dict[str, Store], theirs: EsLicensing, warmup: int) -> dict[str, Any]:
    """Events stored by each side, which must all equal offers + commands."""
    expected = args.aggregates + warmup + args.commands
    found = {
        "expected_events": expected,
        "ours_journal": await stores["ours"].count("journal"),
        "ours_with_outbox_journal": await stores["outbox"].count("journal"),
        "ours_with_outbox_outbox": await stores["outbox"].count("outbox"),
        "theirs_stored_events": _their_event_count(args, theirs),
    }
    if not (found["ours_journal"] == found["ours_with_outbox_journal"] == found["theirs_stored_events"] == expected):
        raise AssertionError(f"the sides stored different numbers of events: {found}")
    return found


def _their_event_count(args: argparse.Namespace, theirs: EsLicensing) -> int:
    """Rows in eventsourcing's stored-events table (its notification ids may have gaps after conflicts)."""
    recorder: Any = theirs.recorder
    table = recorder.events_table_name
    if args.store == "postgresql":
        with psycopg.connect(args.database_url, autocommit=True) as conn:
            row = conn.execute(f'SELECT count(*) FROM "{recorder.datastore.schema}"."{table}"').fetchone()
    else:
        with contextlib.closing(sqlite3.connect(recorder.datastore.pool.db_name)) as conn:
            row = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()
    assert row is not None
    return int(row[0])
