"""Legacy row changes/s turned into integration events in the outbox: tidings' CDC runner vs a hand-written loop on the same WAL.

A private PostgreSQL with wal_level=logical holds a legacy order table (REPLICA IDENTITY FULL) and
two tidings stores (schemas). Two slots are made before the legacy writes, so both contenders read
the same `--rows` changes (orders accepted, P→A, `--rows-per-tx` per source transaction):

`ours`: `CdcRunner.run_once` until drained: per source transaction, the translator (an ACL that
reads the code and parses the amount), one store transaction with the outbox rows and the
checkpoint, then the slot is advanced.

`raw`: what a team would write by hand: peek the other slot, decode pgoutput with the same decoder,
build the same outbox rows (envelope and payload JSON) and insert each peek's rows with one
executemany in one transaction with an UPDATE of a checkpoint row, then advance.

Both contenders run in alternating rounds after an equal warm-up; each round's changes are written
first and then drained, rows/s from the drain's start. Then `--lag-seconds` of steady load
(`--lag-rate` acceptances/s in transactions of one) with `CdcRunner.run` following: the lag is the
time from the source commit to our outbox commit, p50/p99. The outbox counts are checked: a
contender that lost or doubled an event fails the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.brokers_raw import percentiles
from bench.harness import Progress
from tidings.cdc import CdcRunner, ChangeCapture, Drop, RowChange, SlotReader, SourceTransaction
from tidings.cdc.capture import change_event_id
from tidings.messaging import IntegrationEvent
from tidings.store import open_store

NAME = "cdc"


class OrderAccepted(IntegrationEvent, name="ordering.OrderAcceptedForFulfillment", version=1):
    """An order the legacy OMS accepted (the benchmark's contract)."""

    order_id: str
    amount_cents: int
    channel: str


def make_capture() -> ChangeCapture:
    """The benchmark's ACL: P→A is an acceptance; anything else is dropped."""
    capture = ChangeCapture("ordering")

    @capture.translator("legacy_orders")
    def accepted(change: RowChange) -> Any:
        new, old = change.new or {}, change.old or {}
        if change.operation == "update" and old.get("status") == "P" and new.get("status") == "A":
            return OrderAccepted(order_id=str(new["id"]), amount_cents=round(float(str(new["amount"])) * 100), channel=str(new["channel"]))
        return Drop("not an acceptance")

    return capture


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the CDC benchmark."""
    parser.add_argument("--rows", type=int, default=20_000, help="acceptances per contender (default 20000)")
    parser.add_argument("--rows-per-tx", type=int, default=10, help="legacy rows changed per source transaction (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    parser.add_argument("--lag-seconds", type=float, default=10.0, help="seconds of steady load for the lag figures (default 10)")
    parser.add_argument("--lag-rate", type=float, default=200.0, help="acceptances per second during the lag run (default 200)")


async def _legacy_round(url: str, first: int, rows: int, per_tx: int) -> None:
    """Insert ``rows`` pending orders (one transaction), then accept them ``per_tx`` at a time."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO legacy_orders SELECT 'o' || n, 'P', (n %% 997) || '.50', 'web' FROM generate_series(%s::int, %s::int) n",
                (first, first + rows - 1),
            )
        for start in range(first, first + rows, per_tx):
            async with conn.transaction():
                await conn.execute(
                    "UPDATE legacy_orders SET status = 'A' WHERE id = ANY(%s)",
                    ([f"o{n}" for n in range(start, min(start + per_tx, first + rows))],),
                )


class RawLoop:
    """The hand-written contender: peek, decode, insert the same outbox rows per peek, checkpoint, advance."""

    def __init__(self, url: str, schema: str, slot: str) -> None:
        self.url, self.schema = url, schema
        self.reader = SlotReader(url, slot, ["legacy_orders"])
        self.capture = make_capture()
        self.runner = CdcRunner(None, self.reader, self.capture)  # type: ignore[arg-type]  (translate() only: no I/O)

    async def drain(self) -> int:
        from tidings.store.records import OutboxEntry

        inserted = 0
        async with await psycopg.AsyncConnection.connect(self.url, options=f"-c search_path={self.schema}") as conn:
            while True:
                found: list[SourceTransaction] = await self.reader.peek(5_000)
                if not found:
                    return inserted
                entries: list[OutboxEntry] = []
                for tx in found:
                    entries.extend(self.runner.translate(tx).entries)
                async with conn.transaction():
                    async with conn.cursor() as cur:
                        await cur.executemany(
                            "INSERT INTO tidings_outbox (event_id, partition, partition_key, topic, event_type, envelope, payload) "
                            "VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s::jsonb)",
                            [(e.event_id, e.partition, e.partition_key, e.topic, e.event_type, e.envelope.decode(), e.payload.decode())
                             for e in entries],
                        )  # fmt: skip
                    await conn.execute("UPDATE raw_checkpoint SET lsn = %s", (found[-1].end_lsn,))
                await self.reader.advance(found[-1].end_lsn)
                inserted += len(entries)


async def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Start a private logical cluster, then measure ours and raw in alternating rounds, then the lag under load."""
    import sys

    repo = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(repo))
    from faults.servers import PostgresCluster

    if args.rows < 1 or args.rows_per_tx < 1 or args.rounds < 1:
        raise SystemExit("--rows, --rows-per-tx and --rounds must be positive")
    root = Path(tempfile.mkdtemp(prefix="tidings-bench-cdc-"))
    root.chmod(0o755)
    cluster = PostgresCluster(root / "pg", settings={"wal_level": "logical", "max_replication_slots": "10"})
    with progress.task("starting a private PostgreSQL with wal_level=logical", total=1):
        await cluster.start()
    try:
        return await _measure(args, progress, cluster.url)
    finally:
        with progress.task("stopping it", total=1):
            await cluster.stop()
            cluster.destroy()


async def _measure(args: argparse.Namespace, progress: Progress, url: str) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE legacy_orders (id TEXT PRIMARY KEY, status CHAR(1) NOT NULL, amount TEXT, channel TEXT)")
        await conn.execute("ALTER TABLE legacy_orders REPLICA IDENTITY FULL")
    ours_store = await open_store(url, schema="ours", migrate=True)
    raw_store = await open_store(url, schema="raw", migrate=True)
    await raw_store.run("CREATE TABLE raw_checkpoint (lsn BIGINT NOT NULL)")
    await raw_store.run("INSERT INTO raw_checkpoint VALUES (0)")
    ours_reader = SlotReader(url, "bench_ours", ["legacy_orders"])
    raw = RawLoop(url, "raw", "bench_raw")
    await ours_reader.setup()
    await raw.reader.setup()
    ours = CdcRunner(ours_store, ours_reader, make_capture(), max_changes=5_000)
    per_round = max(1, args.rows // args.rounds)
    times = {"ours": 0.0, "raw": 0.0}
    counted = {"ours": 0, "raw": 0}
    next_row = 1

    async def drain_ours() -> None:
        while await ours.run_once():
            pass

    try:
        # Equal warm-up: both slots see the same small round, drained unmeasured.
        warm = min(1_000, per_round)
        await _legacy_round(url, next_row, warm, args.rows_per_tx)
        next_row += warm
        await drain_ours()
        await raw.drain()
        for round_no in range(args.rounds):
            with progress.task(f"round {round_no + 1}: writing {per_round:,} legacy acceptances", total=1):
                await _legacy_round(url, next_row, per_round, args.rows_per_tx)
                next_row += per_round
            order = ("ours", "raw") if round_no % 2 == 0 else ("raw", "ours")
            for who in order:
                with progress.task(f"{who}: draining round {round_no + 1}", total=1):
                    start = time.perf_counter()
                    if who == "ours":
                        await drain_ours()
                    else:
                        await raw.drain()
                    times[who] += time.perf_counter() - start
                counted[who] += per_round
        expected = warm + counted["ours"]
        for who, store in (("ours", ours_store), ("raw", raw_store)):
            rows = await store.fetch("SELECT count(*), count(DISTINCT event_id) FROM tidings_outbox")
            total, distinct = int(rows[0][0]), int(rows[0][1])
            if total != expected or distinct != expected:
                raise SystemExit(f"bench cdc: {who} wrote {total:,} outbox rows ({distinct:,} distinct) for {expected:,} acceptances")

        # Lag under steady load: the runner follows while the monolith accepts orders one per transaction.
        lags: list[float] = []
        ours.on_commit = lambda tx: lags.append(time.time() - tx.commit_time.timestamp())
        ours.poll_interval = 0.02
        stop = asyncio.Event()
        follower = asyncio.create_task(ours.run(stop))
        count = int(args.lag_rate * args.lag_seconds)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(
                "INSERT INTO legacy_orders SELECT 'l' || n, 'P', '1.00', 'web' FROM generate_series(1, %s) n", (count,)
            )
            with progress.task(f"lag: {args.lag_rate:g} acceptances/s for {args.lag_seconds:g} s", total=count):
                begin = time.perf_counter()
                for n in range(1, count + 1):
                    await conn.execute("UPDATE legacy_orders SET status = 'A' WHERE id = %s", (f"l{n}",))
                    progress.advance(1)
                    delay = begin + n / args.lag_rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
        deadline = time.monotonic() + 30
        while len(lags) < count + 1 and time.monotonic() < deadline:  # +1: the insert transaction
            await asyncio.sleep(0.05)
        stop.set()
        await follower
    finally:
        await ours_reader.close()
        await raw.reader.close()
        await ours_store.close()
        await raw_store.close()
    ours_rate = counted["ours"] / times["ours"]
    raw_rate = counted["raw"] / times["raw"]
    lag = percentiles(lags[1:])
    return {
        "name": NAME,
        "units": "legacy rows/s → outbox",
        "ours": round(ours_rate, 1),
        "raw": round(raw_rate, 1),
        "ratio": round(ours_rate / raw_rate, 3),
        "goal": "ratio >= 0.7",
        "goal_met": ours_rate / raw_rate >= 0.7,
        "rows": counted["ours"],
        "rows_per_tx": args.rows_per_tx,
        "rounds": args.rounds,
        "lag_p50_ms": lag["p50_ms"],
        "lag_p99_ms": lag["p99_ms"],
        "lag_max_ms": lag["max_ms"],
        "lag_rate": args.lag_rate,
        "ours_does": "per source transaction: translate, one store transaction (outbox rows + checkpoint), then advance the slot",
        "raw_does": "per peek (up to 5,000 changes): decode, the same outbox rows by one executemany + a checkpoint UPDATE, advance",
        "event_ids": "deterministic (uuid5 of table, key, commit LSN, position)",
    }
