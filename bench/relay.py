"""Rows/s the relay delivers from a pre-filled outbox to a broker vs the same messages published with the broker's own client.

`ours`: a fresh PostgreSQL schema's outbox holds `--rows` rows (default 50,000: ~500-byte JSON
payloads, the Application's envelope, keys spread over `--keys` aggregates), copied in by SQL; an
in-process `Relay` (default settings, `--batch-sizes` tried in turn, each on a freshly filled
outbox) drains it: rows/s from the relay's start until every row is published, confirmed AND
marked delivered. The best batch size is `ours`; the others are in `ours_by_batch`, with the time
split into claiming, publishing (the adapter call, confirmations included), marking and the rest.

`raw`: the same number of messages (same payload sizes, headers, topics and partitions, fresh
event ids) published straight with the broker's native client and its best pipelining (several
methods and window sizes tried; the best is `raw`, all are in `raw_by_variant`). Raw reads
nothing from the outbox and marks nothing: it is the broker's and its client's limit.

Every contender uses a topic of its own (and a stream, exchange or server of the run's own), and
the broker is asked afterwards how many messages it holds, so a contender that lost messages shows.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import psycopg

from bench.brokers_raw import (
    BROKERS,
    DEFAULT_POSTGRES_URL,
    Counting,
    FreshStore,
    Target,
    cpu_count,
    fill_outbox,
    make_entries,
    open_target,
    outgoing,
    partition_keys,
    run_id,
)
from bench.harness import Progress
from tidings.runtime import Relay

NAME = "relay"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the relay benchmark."""
    parser.add_argument("--store", choices=["postgresql"], default="postgresql", help="database (PostgreSQL only)")
    parser.add_argument("--broker", choices=BROKERS, default="nats", help="broker (default nats)")
    parser.add_argument("--rows", type=int, default=50_000, help="outbox rows per contender (default 50000)")
    parser.add_argument("--keys", type=int, default=5_000, help="partition keys (aggregates) the rows spread over")
    parser.add_argument("--batch-sizes", default="500,1000", help="relay batch sizes to try (default 500,1000)")
    parser.add_argument("--raw-windows", default="1000,5000", help="messages in flight per raw window (default 1000,5000)")
    parser.add_argument("--database-url", default=DEFAULT_POSTGRES_URL, help="PostgreSQL server")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up on a drain after this many seconds")
    parser.add_argument("--profile", metavar="FILE", help="write cProfile stats of ours' drains to FILE (slows ours)")


def _ints(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise SystemExit(f"expected positive integers separated by commas, got {text!r}")
    return values


class _Stopwatch:
    """Adds up the time spent in wrapped coroutine functions, per label."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}

    def wrap(self, label: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """`fn`, timed under `label`."""
        self.spent.setdefault(label, 0.0)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.spent[label] += time.perf_counter() - start

        return timed


async def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Fill, drain with the relay per batch size, publish raw per variant; all on names of this run."""
    if args.rows < 1 or args.keys < 1:
        raise SystemExit("--rows and --keys must be positive")
    batch_sizes, windows = _ints(args.batch_sizes), _ints(args.raw_windows)
    load_before = os.getloadavg()
    run_tag = run_id()
    with progress.task(f"opening a fresh schema and {args.broker}", total=1):
        fresh = await FreshStore.open(args.database_url, f"bench_relay_{run_tag}")
        try:
            target = await open_target(args.broker, run_tag, fresh)
        except BaseException:
            await fresh.close()
            raise
    try:
        result = await _measure(args, progress, fresh, target, run_tag, batch_sizes, windows)
        result["load_average_before"] = [round(x, 2) for x in load_before]
        return result
    finally:
        with progress.task("cleaning up", total=1):
            try:
                await target.close()
            finally:
                await fresh.close()


async def _measure(
    args: argparse.Namespace,
    progress: Progress,
    fresh: FreshStore,
    target: Target,
    run_tag: str,
    batch_sizes: list[int],
    windows: list[int],
) -> dict[str, Any]:
    keys = partition_keys(args.keys)
    n = args.rows
    broker = await target.adapter()
    profiler = cProfile.Profile() if args.profile else None

    ours: dict[str, dict[str, Any]] = {}
    for batch_size in batch_sizes:
        topic = f"bench.relay.{run_tag}.b{batch_size}"
        await target.prepare_topic(topic)
        entries = make_entries(n, topic, keys, seed=batch_size)
        with progress.task(f"filling the outbox ({n:,} rows)", total=n):
            await fill_outbox(fresh, entries, progress.advance)
        del entries
        watch = _Stopwatch()
        with progress.task(f"ours: relay (batch {batch_size}) → {args.broker}", total=n):
            relay = Relay(fresh.store, Counting(broker, progress.advance), batch_size=batch_size)  # type: ignore[arg-type]
            # Instrumented from outside: three timers per batch, nothing inside the relay changes.
            relay.outbox.claim = watch.wrap("claim", relay.outbox.claim)  # type: ignore[method-assign]
            relay.outbox.mark_delivered = watch.wrap("mark", relay.outbox.mark_delivered)  # type: ignore[method-assign]
            relay.broker.publish = watch.wrap("publish", relay.broker.publish)  # type: ignore[method-assign]
            if profiler is not None:
                profiler.enable()
            start = time.perf_counter()
            await relay.drain(timeout=args.timeout)
            seconds = time.perf_counter() - start
            if profiler is not None:
                profiler.disable()
        delivered = int(await fresh.scalar("SELECT count(*) FROM tidings_outbox WHERE delivered_at IS NOT NULL"))
        stored = await target.stored(topic)
        spent = {f"{label}_s": round(value, 3) for label, value in watch.spent.items()}
        ours[str(batch_size)] = {
            "rows_per_s": round(delivered / seconds, 1),
            "seconds": round(seconds, 3),
            "delivered": delivered,
            "backlog_after": await fresh.backlog(),
            "in_broker": stored,
            **spent,
            "other_s": round(seconds - sum(watch.spent.values()), 3),
        }
        await target.drop_topic(topic)
        await fresh.store.run("TRUNCATE tidings_outbox")
    if profiler is not None:
        profiler.dump_stats(args.profile)
        progress.log(f"cProfile stats of ours written to {args.profile}")

    raw: dict[str, dict[str, Any]] = {}
    sample: dict[str, float] = {}
    for i, (variant, window) in enumerate(target.variants(windows)):
        topic = f"bench.relay.{run_tag}.raw{i}"
        await target.prepare_topic(topic)
        with progress.task(f"building {n:,} raw messages", total=1):
            entries = make_entries(n, topic, keys, seed=1000 + i)
            messages = [outgoing(e) for e in entries]
        if not sample:
            sample = {
                "payload_bytes": round(sum(len(e.payload) for e in entries) / n, 1),
                "envelope_bytes": round(sum(len(e.envelope) for e in entries) / n, 1),
                "headers_per_message": round(sum(len(m.headers) for m in messages) / n, 1),
            }
        del entries
        with progress.task(f"raw: {args.broker} {variant}, window {window}", total=n):
            result = await target.raw_publish(messages, variant, window, progress.advance)
        raw[result.variant] = {
            "rows_per_s": round(result.rate, 1),
            "seconds": round(result.seconds, 3),
            "confirmed": result.confirmed,
            "failed": result.failed,
            "in_broker": await target.stored(topic),
        }
        del messages
        await target.drop_topic(topic)

    best_batch = max(ours, key=lambda b: ours[b]["rows_per_s"])
    best_raw = max(raw, key=lambda v: raw[v]["rows_per_s"])
    ours_rate, raw_rate = ours[best_batch]["rows_per_s"], raw[best_raw]["rows_per_s"]
    return {
        "name": NAME,
        "units": "rows/s",
        "ours": ours_rate,
        "raw": raw_rate,
        "ratio": round(ours_rate / raw_rate, 3) if raw_rate else None,
        "goal": "ratio >= 0.8",
        "goal_met": bool(raw_rate) and ours_rate / raw_rate >= 0.8,
        "broker": args.broker,
        "store": args.store,
        "rows": n,
        "keys": args.keys,
        "best_batch_size": int(best_batch),
        "best_raw_variant": best_raw,
        **sample,
        "ours_by_batch": ours,
        "raw_by_variant": raw,
        "ours_does": (
            "in-process Relay.drain on a pre-filled outbox: claim a batch (SELECT … ORDER BY id LIMIT batch), build "
            "headers from each envelope, publish in rounds of one message per key through the tidings adapter "
            "(pipelined, confirmations awaited), mark the batch delivered (one UPDATE); the next claim and the last "
            "batch's marking overlap the publishing, so claim_s + mark_s + publish_s may exceed the wall time "
            "(other_s is then negative); rows/s from start to empty outbox"
        ),
        "raw_does": (
            "the broker's native client publishes the same number of messages (same sizes, headers, topics, partitions), "
            "`window` at a time, confirmations gathered; no database work"
        ),
        "broker_names": "stream/exchange/topics of this run only; removed afterwards",
        "profile": args.profile,
        "versions": {"python": platform.python_version(), "psycopg": psycopg.__version__, "msgspec": msgspec.__version__},
        "cpus": cpu_count(),
    }
