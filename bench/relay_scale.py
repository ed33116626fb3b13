"""Rows/s with 1, 2 and 4 relay processes sharing one outbox (PostgreSQL advisory-lock partitions).

For each relay count K: K `tidings relay` processes (as tests/test_relay.py spawns them, with the
broker URL and `--batch-size`, default 1000) start on an empty outbox of a fresh schema and are
waited for until they own all partitions in fair shares. Then `--rows` rows (the relay benchmark's
rows: ~500-byte payloads, keys over `--keys` aggregates) are copied in by ONE transaction, so they
appear at once and wake the relays together. Rate = rows / (last row's `delivered_at` − the
commit): both times come from this machine's clock, and the relays' start-up is not counted.

`ours` is the best of the relay counts; `raw` is the 1-relay rate, so `ratio` is the speed-up that
more relay processes buy (`raw_publish` shows the broker's native publish rate for reference).
On a 2-core machine the relays, PostgreSQL and the broker share two cores: expect little scaling.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from bench.brokers_raw import (
    BROKERS,
    DEFAULT_POSTGRES_URL,
    FreshStore,
    Target,
    cpu_count,
    fill_outbox,
    make_entries,
    open_target,
    outgoing,
    partition_keys,
    run_id,
    spawn_relay,
    stop_relays,
    wait_for_relays,
)
from bench.harness import Progress

NAME = "relay-scale"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the relay scaling benchmark."""
    parser.add_argument("--store", choices=["postgresql"], default="postgresql", help="database (PostgreSQL only)")
    parser.add_argument("--broker", choices=[b for b in BROKERS if b != "kafka"], default="nats", help="broker (default nats)")
    parser.add_argument("--rows", type=int, default=50_000, help="outbox rows per relay count (default 50000)")
    parser.add_argument("--keys", type=int, default=5_000, help="partition keys (aggregates) the rows spread over")
    parser.add_argument("--relays", default="1,2,4", help="relay process counts to measure (default 1,2,4)")
    parser.add_argument("--batch-size", type=int, default=1000, help="batch size of each relay process (default 1000)")
    parser.add_argument("--raw-window", type=int, default=5000, help="window of the reference raw publish (0: skip it)")
    parser.add_argument("--database-url", default=DEFAULT_POSTGRES_URL, help="PostgreSQL server")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up on one relay count after this many seconds")


async def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Measure each relay count on a fresh fill of the outbox, then the raw reference."""
    counts = sorted({int(part) for part in args.relays.split(",") if part.strip()})
    if not counts or counts[0] < 1 or args.rows < 1:
        raise SystemExit("--relays needs positive counts and --rows must be positive")
    run_tag = run_id()
    logs_dir = Path(tempfile.mkdtemp(prefix="tidings-bench-relay-scale-"))
    load_before = os.getloadavg()
    with progress.task(f"opening a fresh schema and {args.broker}", total=1):
        fresh = await FreshStore.open(args.database_url, f"bench_scale_{run_tag}")
        try:
            target = await open_target(args.broker, run_tag, fresh)
        except BaseException:
            await fresh.close()
            raise
    try:
        by_count = {}
        for k in counts:
            by_count[str(k)] = await _measure(args, progress, fresh, target, run_tag, k, logs_dir)
        raw_publish = await _raw(args, progress, target, run_tag) if args.raw_window else None
    finally:
        with progress.task("cleaning up", total=1):
            try:
                await target.close()
            finally:
                await fresh.close()
                shutil.rmtree(logs_dir, ignore_errors=True)

    best = max(by_count, key=lambda k: by_count[k]["rows_per_s"])
    one = by_count.get("1", by_count[str(counts[0])])["rows_per_s"]
    return {
        "name": NAME,
        "units": "rows/s",
        "ours": by_count[best]["rows_per_s"],
        "raw": one,
        "ratio": round(by_count[best]["rows_per_s"] / one, 3) if one else None,
        "ratio_is": f"best relay count ({best}) / 1 relay process: the speed-up from more relays",
        "best_relays": int(best),
        "by_relays": by_count,
        "raw_publish": raw_publish,
        "broker": args.broker,
        "store": args.store,
        "rows": args.rows,
        "keys": args.keys,
        "batch_size": args.batch_size,
        "relays_are": f"`python -m tidings.cli relay --batch-size {args.batch_size}` processes, timed from the fill's commit",
        "load_average_before": [round(x, 2) for x in load_before],
        "versions": {"python": platform.python_version(), "psycopg": psycopg.__version__},
        "cpus": cpu_count(),
    }


async def _measure(
    args: argparse.Namespace, progress: Progress, fresh: FreshStore, target: Target, run_tag: str, k: int, logs_dir: Path
) -> dict[str, Any]:
    topic = f"bench.scale.{run_tag}.r{k}"
    await target.prepare_topic(topic)
    await fresh.store.run("TRUNCATE tidings_outbox")
    with progress.task(f"building {args.rows:,} rows", total=1):
        entries = make_entries(args.rows, topic, partition_keys(args.keys), seed=k)
    logs = [logs_dir / f"r{k}-{i}.log" for i in range(k)]
    processes = []
    try:
        with progress.task(f"starting {k} relay process(es)", total=1):
            processes = [spawn_relay(fresh, target.url, args.batch_size, log) for log in logs]
            settle = await wait_for_relays(fresh, processes, logs)
        with progress.task(f"filling the outbox ({args.rows:,} rows, one transaction)", total=args.rows):
            committed = await fill_outbox(fresh, entries, progress.advance)
        del entries
        with progress.task(f"{k} relay process(es) draining", total=args.rows) as task:
            deadline = time.monotonic() + args.timeout
            left = args.rows
            while left and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                now_left = await fresh.backlog()
                task.advance(left - now_left)
                left = now_left
            if left:
                raise RuntimeError(f"{k} relay(s) left {left} rows after {args.timeout} s")
    finally:
        stop_relays(processes)
    last: datetime = await fresh.scalar("SELECT max(delivered_at) FROM tidings_outbox")
    seconds = last.timestamp() - committed
    delivered = int(await fresh.scalar("SELECT count(*) FROM tidings_outbox WHERE delivered_at IS NOT NULL"))
    result = {
        "rows_per_s": round(delivered / seconds, 1),
        "seconds": round(seconds, 3),
        "delivered": delivered,
        "in_broker": await target.stored(topic),
        "settle_s": round(settle, 2),
    }
    await target.drop_topic(topic)
    return result


async def _raw(args: argparse.Namespace, progress: Progress, target: Target, run_tag: str) -> dict[str, Any]:
    topic = f"bench.scale.{run_tag}.raw"
    await target.prepare_topic(topic)
    with progress.task(f"building {args.rows:,} raw messages", total=1):
        messages = [outgoing(e) for e in make_entries(args.rows, topic, partition_keys(args.keys), seed=99)]
    variants = target.variants([args.raw_window])
    # The adapter's own way of pipelining is the fair reference where a broker offers several.
    variant, window = next((v for v in variants if v[0] == "publish-reply-gather"), variants[0])
    with progress.task(f"raw: {args.broker} {variant}, window {window}", total=args.rows):
        result = await target.raw_publish(messages, variant, window, progress.advance)
    await target.drop_topic(topic)
    return {"variant": result.variant, "rows_per_s": round(result.rate, 1), "confirmed": result.confirmed}
