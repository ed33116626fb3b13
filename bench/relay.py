"""Rows/s the relay delivers from a pre-filled outbox to a broker vs the same messages published with the broker's own client.

Every contender (ours per batch size, raw per variant) first runs an equal, unmeasured warm-up, then
the rows are split into `--rounds` rounds run in alternating order (reversed every other round), so
a slow phase of the machine hits all alike. Ours' clock starts after the relay owns its partitions,
as raw's starts after its connection and stream exist. A contender that delivered other than every
row (counted in the outbox and, where it can tell, in the broker) fails the benchmark.

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

`hand_written`: what a user would write instead of the relay, on a freshly filled outbox like ours:
in one transaction claim `batch` rows (`SELECT … WHERE delivered_at IS NULL ORDER BY id LIMIT batch
FOR UPDATE SKIP LOCKED`), publish them pipelined with the broker's native client (the raw publish
step, one window per batch), mark them delivered in one UPDATE, commit; repeat until a claim comes
back empty. It keeps no order per key across failures and has no retry, parking or partitions.

Every contender uses a topic of its own (and a stream, exchange or server of the run's own), and
the broker is asked afterwards how many messages it holds, so a contender that lost messages shows.
"""

from __future__ import annotations

import argparse
import asyncio
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
from tidings.brokers.base import OutgoingMessage
from tidings.brokers.headers import envelope_to_headers
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
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds the rows are split into (default 2)")
    parser.add_argument("--warmup", type=int, default=2_000, help="rows of each contender's unmeasured warm-up (default 2000)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up on a drain after this many seconds")
    parser.add_argument("--profile", metavar="FILE", help="write cProfile stats of ours' drains to FILE (slows ours)")


def _tally() -> dict[str, Any]:
    """A contender's sums over its measured rounds."""
    return {"seconds": 0.0, "delivered": 0, "in_broker": 0}


def _name(contender: tuple[str, Any]) -> str:
    kind, detail = contender
    if kind == "ours":
        return f"ours/batch {detail}"
    if kind == "hand":
        return f"hand-written/batch {detail}"
    return f"raw/{detail[0]}/{detail[1]}"


# The hand-written relay's statements: what a user writes for an outbox without a library.
HAND_CLAIM = (
    "SELECT id, topic, partition, partition_key, event_id::text, envelope::text, payload::text FROM tidings_outbox "
    "WHERE delivered_at IS NULL AND parked_at IS NULL ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
)
HAND_MARK = "UPDATE tidings_outbox SET delivered_at = now() WHERE id = ANY(%s)"


def hand_variant(target: Target) -> str:
    """The native publishing method the hand-written relay uses: the one a user reaches for first (NATS: js.publish_async)."""
    variants = [v for v, _ in target.variants([1])]
    return "js.publish_async" if "js.publish_async" in variants else variants[0]


async def hand_written_drain(
    fresh: FreshStore,
    target: Target,
    batch_size: int,
    advance: Callable[[int], None] | None = None,
    conn: psycopg.AsyncConnection[Any] | None = None,
) -> tuple[int, int]:
    """Drain the outbox as a hand-written relay would (on `conn` if given); returns (messages confirmed, publishes failed)."""
    if conn is None:
        async with await fresh.connect() as own:
            return await hand_written_drain(fresh, target, batch_size, advance, own)
    variant = hand_variant(target)
    confirmed = failed = 0
    # The loop a user writes: one transaction per batch until a claim comes back empty.
    while True:
        async with conn.transaction():
            cur = await conn.execute(HAND_CLAIM, (batch_size,))
            rows = await cur.fetchall()
            if not rows:
                return confirmed, failed
            messages = [
                OutgoingMessage(
                    topic=topic, key=key, partition=partition, event_id=event_id,
                    headers=envelope_to_headers(envelope.encode()), payload=payload.encode(),
                )
                for _, topic, partition, key, event_id, envelope, payload in rows
            ]  # fmt: skip
            result = await target.raw_publish(messages, variant, len(messages), advance)
            confirmed, failed = confirmed + result.confirmed, failed + result.failed
            if result.failed:
                # A hand-written relay would roll back and retry; here a failure ends the run (and `_check` fails it).
                return confirmed, failed
            await conn.execute(HAND_MARK, ([row[0] for row in rows],))


def _check(who: str, rows: int, *, delivered: int, in_broker: int | None, backlog: int = 0, failed: int = 0) -> None:
    """Fail the benchmark when a contender did not deliver exactly ``rows`` messages (a fast wrong run proves nothing)."""
    problems = []
    if delivered != rows:
        problems.append(f"delivered {delivered:,} of {rows:,}")
    if in_broker is not None and in_broker != rows:
        problems.append(f"the broker holds {in_broker:,}")
    if backlog:
        problems.append(f"{backlog:,} rows left in the outbox")
    if failed:
        problems.append(f"{failed:,} publishes failed")
    if problems:
        raise SystemExit(f"bench relay: {who} is wrong ({'; '.join(problems)}), so its rate means nothing")


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
    if args.rows < 1 or args.keys < 1 or args.rounds < 1 or args.warmup < 0:
        raise SystemExit("--rows, --keys and --rounds must be positive, --warmup not negative")
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
    broker = await target.adapter()
    profiler = cProfile.Profile() if args.profile else None
    per_round = max(1, args.rows // args.rounds)
    n = per_round * args.rounds
    contenders: list[tuple[str, Any]] = (
        [("ours", b) for b in batch_sizes] + [("hand", b) for b in batch_sizes] + [("raw", vw) for vw in target.variants(windows)]
    )
    ours: dict[str, dict[str, Any]] = {str(b): _tally() for b in batch_sizes}
    hand: dict[str, dict[str, Any]] = {str(b): _tally() for b in batch_sizes}
    raw: dict[str, dict[str, Any]] = {}
    sample: dict[str, float] = {}
    counter = iter(range(10**9))

    async def ours_round(batch_size: int, rows: int, measured: bool) -> None:
        topic = f"bench.relay.{run_tag}.b{batch_size}.{next(counter)}"
        await target.prepare_topic(topic)
        entries = make_entries(rows, topic, keys, seed=batch_size * 1000 + next(counter))
        with progress.task(f"filling the outbox ({rows:,} rows)", total=rows):
            await fill_outbox(fresh, entries, progress.advance)
        del entries
        watch = _Stopwatch()
        label = f"ours: relay (batch {batch_size}) → {args.broker}" + ("" if measured else " (warm-up)")
        with progress.task(label, total=rows):
            relay = Relay(fresh.store, Counting(broker, progress.advance), batch_size=batch_size)  # type: ignore[arg-type]
            # Owning the partitions is start-up, not relaying: done before the clock starts, as raw's
            # connection and stream set-up are.
            await relay._maybe_rebalance(force=True)
            # Instrumented from outside: three timers per batch, nothing inside the relay changes.
            relay.outbox.claim = watch.wrap("claim", relay.outbox.claim)  # type: ignore[method-assign]
            relay.outbox.mark_delivered = watch.wrap("mark", relay.outbox.mark_delivered)  # type: ignore[method-assign]
            relay.broker.publish = watch.wrap("publish", relay.broker.publish)  # type: ignore[method-assign]
            if profiler is not None and measured:
                profiler.enable()
            start = time.perf_counter()
            await relay.drain(timeout=args.timeout)
            seconds = time.perf_counter() - start
            if profiler is not None and measured:
                profiler.disable()
        delivered = int(await fresh.scalar("SELECT count(*) FROM tidings_outbox WHERE delivered_at IS NOT NULL"))
        stored = await target.stored(topic)
        # A contender that lost or doubled messages has no rate worth printing: the benchmark fails.
        _check(f"ours (batch {batch_size})", rows, delivered=delivered, in_broker=stored, backlog=await fresh.backlog())
        await target.drop_topic(topic)
        await fresh.store.run("TRUNCATE tidings_outbox")
        if measured:
            tally = ours[str(batch_size)]
            tally["seconds"] += seconds
            tally["delivered"] += delivered
            tally["in_broker"] = (tally["in_broker"] or 0) + (stored or 0) if stored is not None else None
            for key, value in watch.spent.items():
                tally[f"{key}_s"] = tally.get(f"{key}_s", 0.0) + value

    async def hand_round(batch_size: int, rows: int, measured: bool) -> None:
        topic = f"bench.relay.{run_tag}.h{batch_size}.{next(counter)}"
        await target.prepare_topic(topic)
        entries = make_entries(rows, topic, keys, seed=batch_size * 1000 + next(counter))
        with progress.task(f"filling the outbox ({rows:,} rows)", total=rows):
            await fill_outbox(fresh, entries, progress.advance)
        del entries
        label = f"hand-written relay (batch {batch_size}) → {args.broker}" + ("" if measured else " (warm-up)")
        with progress.task(label, total=rows):
            start = time.perf_counter()
            confirmed, failed = await asyncio.wait_for(hand_written_drain(fresh, target, batch_size, progress.advance), args.timeout)
            seconds = time.perf_counter() - start
        delivered = int(await fresh.scalar("SELECT count(*) FROM tidings_outbox WHERE delivered_at IS NOT NULL"))
        stored = await target.stored(topic)
        _check(f"hand-written (batch {batch_size})", rows, delivered=delivered, in_broker=stored, backlog=await fresh.backlog(), failed=failed)
        _check(f"hand-written (batch {batch_size}), confirmations", rows, delivered=confirmed, in_broker=None)
        await target.drop_topic(topic)
        await fresh.store.run("TRUNCATE tidings_outbox")
        if measured:
            tally = hand[str(batch_size)]
            tally["seconds"] += seconds
            tally["delivered"] += delivered
            tally["in_broker"] = (tally["in_broker"] or 0) + (stored or 0) if stored is not None else None

    async def raw_round(variant: str, window: int, rows: int, measured: bool) -> None:
        topic = f"bench.relay.{run_tag}.raw.{next(counter)}"
        await target.prepare_topic(topic)
        with progress.task(f"building {rows:,} raw messages", total=1):
            entries = make_entries(rows, topic, keys, seed=next(counter))
            messages = [outgoing(e) for e in entries]
        if not sample and measured:
            sample.update({
                "payload_bytes": round(sum(len(e.payload) for e in entries) / rows, 1),
                "envelope_bytes": round(sum(len(e.envelope) for e in entries) / rows, 1),
                "headers_per_message": round(sum(len(m.headers) for m in messages) / rows, 1),
            })  # fmt: skip
        del entries
        label = f"raw: {args.broker} {variant}, window {window}" + ("" if measured else " (warm-up)")
        with progress.task(label, total=rows):
            result = await target.raw_publish(messages, variant, window, progress.advance)
        stored = await target.stored(topic)
        _check(f"raw ({result.variant})", rows, delivered=result.confirmed, in_broker=stored, failed=result.failed)
        del messages
        await target.drop_topic(topic)
        if measured:
            tally = raw.setdefault(result.variant, _tally())
            tally["seconds"] += result.seconds
            tally["delivered"] += result.confirmed
            tally["in_broker"] = (tally["in_broker"] or 0) + (stored or 0) if stored is not None else None

    async def one(contender: tuple[str, Any], rows: int, measured: bool) -> None:
        kind, detail = contender
        if kind == "ours":
            await ours_round(detail, rows, measured)
        elif kind == "hand":
            await hand_round(detail, rows, measured)
        else:
            await raw_round(detail[0], detail[1], rows, measured)

    # Equal warm-up for every contender, then rounds in alternating order (reversed every other
    # round), so a slow phase of the machine falls on all of them alike.
    warmup = min(per_round, max(1, args.warmup))
    for contender in contenders:
        await one(contender, warmup, measured=False)
    for round_index in range(args.rounds):
        order = contenders if round_index % 2 == 0 else list(reversed(contenders))
        progress.log(f"round {round_index + 1}/{args.rounds}: {', '.join(_name(c) for c in order)}")
        for contender in order:
            await one(contender, per_round, measured=True)
    if profiler is not None:
        profiler.dump_stats(args.profile)
        progress.log(f"cProfile stats of ours written to {args.profile}")
    for tally in (*ours.values(), *hand.values(), *raw.values()):
        tally["rows_per_s"] = round(tally["delivered"] / tally["seconds"], 1) if tally["seconds"] else 0.0
        tally["seconds"] = round(tally["seconds"], 3)
        phases = ("claim_s", "publish_s", "mark_s")
        if any(k in tally for k in phases):
            spent = sum(tally.get(k, 0.0) for k in phases)
            for key in phases:
                tally[key] = round(tally.get(key, 0.0), 3)
            tally["other_s"] = round(tally["seconds"] - spent, 3)

    best_batch = max(ours, key=lambda b: ours[b]["rows_per_s"])
    best_raw = max(raw, key=lambda v: raw[v]["rows_per_s"])
    best_hand = max(hand, key=lambda b: hand[b]["rows_per_s"])
    ours_rate, raw_rate = ours[best_batch]["rows_per_s"], raw[best_raw]["rows_per_s"]
    hand_rate = hand[best_hand]["rows_per_s"]
    return {
        "name": NAME,
        "units": "rows/s",
        "ours": ours_rate,
        "raw": raw_rate,
        "ratio": round(ours_rate / raw_rate, 3) if raw_rate else None,
        "hand_written": hand_rate,
        "ratio_hand_written": round(ours_rate / hand_rate, 3) if hand_rate else None,
        "goal": "ratio >= 0.8 and ratio_hand_written >= 1.0",
        "goal_met": bool(raw_rate) and bool(hand_rate) and ours_rate / raw_rate >= 0.8 and ours_rate / hand_rate >= 1.0,
        "broker": args.broker,
        "store": args.store,
        "rows": n,
        "rounds": args.rounds,
        "warmup_rows": warmup,
        "keys": args.keys,
        "best_batch_size": int(best_batch),
        "best_raw_variant": best_raw,
        **sample,
        "ours_by_batch": ours,
        "hand_written_by_batch": hand,
        "hand_written_variant": hand_variant(target),
        "raw_by_variant": raw,
        "ours_does": (
            "in-process Relay.drain on a pre-filled outbox: claim a batch (SELECT … ORDER BY id LIMIT batch), build "
            "headers from each envelope, publish in rounds of one message per key through the tidings adapter "
            "(pipelined, confirmations awaited), mark the batch delivered (one UPDATE); the next claim and the last "
            "batch's marking overlap the publishing, so claim_s + mark_s + publish_s may exceed the wall time "
            "(other_s is then negative); rows/s from start to empty outbox"
        ),
        "hand_written_does": (
            "per batch, one transaction: SELECT … ORDER BY id LIMIT batch FOR UPDATE SKIP LOCKED, headers from each "
            "envelope, the raw publish step (native client, the whole batch in flight, confirmations awaited), one "
            "UPDATE … SET delivered_at = now() WHERE id = ANY(ids), commit; until a claim is empty"
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
