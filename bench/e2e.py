"""Latency from a command's commit to a consumer receiving its event (Application → outbox → relay → broker → consumer).

`ours`: an Application (a ticker model defined here: find-or-create the ticker, record one
`PriceTicked`, a translator publishes one ~500-byte `TickerPriceChanged` to the outbox) handles
commands at a fixed offered rate. The load is open-loop: a dispatcher starts every command at its
scheduled time (1/rate apart) as its own task, whatever the earlier ones are doing, up to
`--max-in-flight` at once on a pool of `--pool` connections. A relay (by default a separate
`tidings relay` process, as it is deployed; `--relay inline` runs it in this process) publishes
through the tidings adapter, and a consumer in this process, subscribed through the same adapter as
a consumer group, records when each event arrives (acks run as tasks of their own so they do not
delay the next receipt). Latency = arrival − the moment the store's commit statement returned
(stamped by a wrapper around this store's `commit`), matched by event id. `ours` is its p99.

`raw`: the pipeline a user would otherwise write, at the same offered rate: each message is one
INSERT into an outbox table (a schema of its own, the same row shape) with a `pg_notify` in the
same statement (atomic, one round trip; the time is stamped when it returns, as ours' commit is);
a listener in this process wakes on the notification, claims with `FOR UPDATE SKIP LOCKED` in
batches, publishes them pipelined with the native client and marks them delivered (bench relay's
hand-written relay); a native subscriber records arrivals. `raw` is its p99 (`raw_p99_ms`) and
`p99_ratio` = ours p99 / raw p99 (goal ≤ 1.5).

`floor`: the broker's latency floor: the same number of messages of the same size and headers,
published at the same offered rate with the native client (one publish per message, its
confirmation awaited, many in flight), consumed with the native client's lowest-latency consumer
(NATS: a push consumer; Redis: XREADGROUP on the same streams). Latency = arrival − the moment the
publish started; its figures are `floor_*`, and `floor_ratio` = floor p99 / ours p99 (1.0 = tidings
adds nothing to the broker's own latency; lower = tidings adds more).

All three run `--rounds` times, the order reversed every other round, each round with the same warm-up and a
share of the measured seconds; percentiles are over all rounds. A contender that lost a message
fails the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import platform
import random
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from bench.brokers_raw import (
    DEFAULT_POSTGRES_URL,
    FreshStore,
    Target,
    cpu_count,
    make_entries,
    open_target,
    outgoing,
    partition_keys,
    percentiles,
    run_id,
    spawn_relay,
    stop_relays,
    wait_for_relays,
)
from bench.harness import Progress
from bench.relay import hand_written_drain
from tidings.app import Application, UnitOfWork
from tidings.domain import Command, DomainEvent, StateStoredAggregate, applies
from tidings.messaging import Envelope, IntegrationEvent
from tidings.runtime import Relay

NAME = "e2e"

GOAL_P99_MS = 20.0
GOAL_RATE = 2000.0


# --- the model -------------------------------------------------------------------------------


class PriceTicked(DomainEvent, name="benchmarket.PriceTicked"):
    """A ticker's price changed."""

    n: int
    price_cents: int
    volume: int
    note: str


class TickPrice(Command, name="benchmarket.TickPrice"):
    """Record a new price for a ticker (creating the ticker on its first price)."""

    ticker_id: str
    price_cents: int
    volume: int
    note: str


class TickerPriceChanged(IntegrationEvent, name="benchmarket.TickerPriceChanged", version=1):
    """Public contract: a ticker has a new price (what the measured consumer receives)."""

    ticker_id: str
    n: int
    price_cents: int
    volume: int
    currency: str
    venue: str
    source_feed: str
    note: str


class Ticker(StateStoredAggregate, name="BenchTicker"):
    """Counts its prices and keeps the last one."""

    n: int = 0
    price_cents: int = 0

    def tick(self, command: TickPrice) -> None:
        """Record the new price."""
        self.record(PriceTicked(n=self.n + 1, price_cents=command.price_cents, volume=command.volume, note=command.note))

    @applies
    def _ticked(self, event: PriceTicked) -> None:
        self.n = event.n
        self.price_cents = event.price_cents


def make_app(fresh: FreshStore, topic: str) -> Application:
    """The measured application: one command, one state row, one journal row and one outbox row per command."""
    app = Application(fresh.store, name="benchmarket")

    @app.command_handler(TickPrice)
    async def tick(command: TickPrice, uow: UnitOfWork) -> None:
        ticker = await uow.find(Ticker, command.ticker_id) or uow.add(Ticker(command.ticker_id))
        ticker.tick(command)

    @app.translator(PriceTicked, topic=topic)
    def publish(event: PriceTicked, envelope: Envelope) -> TickerPriceChanged:
        return TickerPriceChanged(
            ticker_id=envelope.aggregate_id or "",
            n=event.n,
            price_cents=event.price_cents,
            volume=event.volume,
            currency="EUR",
            venue="XETRA",
            source_feed="bench-feed-07",
            note=event.note,
        )

    return app


# --- open-loop load ----------------------------------------------------------------------------


@dataclass
class Offered:
    """What one open-loop run did: when each message was committed or sent, and how late starts were."""

    seconds: float = 0.0
    done_at: dict[str, float] = field(default_factory=dict)  # event id -> when handle/publish returned or started
    call_latencies: list[float] = field(default_factory=list)  # scheduled start -> call returned
    late_starts: int = 0  # calls that began more than 5 ms after their scheduled time
    failures: int = 0

    @property
    def rate(self) -> float:
        """Calls completed per second of the offering window."""
        return len(self.call_latencies) / self.seconds if self.seconds else 0.0


async def offer(
    count: int,
    rate: float,
    call: Callable[[int], Awaitable[str]],
    *,
    max_in_flight: int,
    advance: Callable[[int], None] | None = None,
    stamp: str = "after",
) -> Offered:
    """Start `call(i)` at t0 + i/rate for i < count, each as its own task (open loop); `call` returns the event id.

    `stamp="after"` records the time the call returned (ours: after the commit); `"before"`, the
    time it started (raw: when the publish began).
    """
    result = Offered()
    room = asyncio.Semaphore(max_in_flight)
    clock = time.perf_counter
    interval = 1.0 / rate
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int, scheduled: float) -> None:
        async with room:
            began = clock()
            if began - scheduled > 0.005:
                result.late_starts += 1
            try:
                event_id = await call(i)
            except Exception:
                result.failures += 1
                return
            ended = clock()
            result.done_at[event_id] = began if stamp == "before" else ended
            result.call_latencies.append(ended - scheduled)

    t0 = clock() + 0.01
    i = 0
    while i < count:
        now = clock()
        # Everything due is started now; a late wake-up starts a few at once, so the rate holds.
        while i < count and t0 + i * interval <= now:
            task = asyncio.get_running_loop().create_task(one(i, t0 + i * interval))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
            if advance is not None and i % 100 == 0:
                advance(100)
        if i < count:
            await asyncio.sleep(max(0.0, t0 + i * interval - clock()))
    if tasks:
        await asyncio.gather(*tasks)
    result.seconds = clock() - t0
    if advance is not None:
        advance(count % 100)
    return result


async def wait_for_arrivals(expected: set[str], arrived: dict[str, float], timeout: float) -> None:
    """Return when every expected event id has arrived, or after `timeout` seconds."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline and not expected.issubset(arrived.keys()):
        await asyncio.sleep(0.02)


def check_arrivals(who: str, sent: int, missing: int) -> None:
    """Fail the benchmark when a contender's subscriber did not receive every message it sent (its latency would mean nothing)."""
    if missing:
        raise SystemExit(f"bench e2e: {who} lost {missing:,} of {sent:,} message(s) (not received within 15 s), so its latency means nothing")


def latencies(sent: dict[str, float], arrived: dict[str, float]) -> tuple[list[float], int]:
    """Arrival minus commit (or send) per event; and how many arrived before the call had returned (clamped to 0)."""
    values, early = [], 0
    for event_id, at in sent.items():
        if event_id in arrived:
            delta = arrived[event_id] - at
            if delta < 0:
                early += 1
                delta = 0.0
            values.append(delta)
    return values, early


# --- the run -----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the end-to-end latency benchmark."""
    parser.add_argument("--store", choices=["postgresql"], default="postgresql", help="database (PostgreSQL only)")
    parser.add_argument("--broker", choices=["nats", "redis"], default="nats", help="broker (default nats)")
    parser.add_argument("--rate", type=float, default=GOAL_RATE, help="offered commands per second (default 2000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds of load (default 10)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring (default 1)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds the measured seconds are split into, ours and raw in alternating order (default 2)")
    parser.add_argument("--keys", type=int, default=5_000, help="tickers the commands spread over (default 5000)")
    parser.add_argument("--relay", choices=["process", "inline"], default="process", help="relay as a process (default) or in this one")
    parser.add_argument("--batch-size", type=int, default=500, help="relay batch size (default 500, the relay's own)")
    parser.add_argument("--pool", type=int, default=16, help="PostgreSQL connections of the application (default 16)")
    parser.add_argument("--max-in-flight", type=int, default=64, help="commands running at once at most (default 64)")
    parser.add_argument("--database-url", default=DEFAULT_POSTGRES_URL, help="PostgreSQL server")
    parser.add_argument("--relay-profile", metavar="FILE", help="run the relay process under cProfile, stats to FILE")
    parser.add_argument("--profile", metavar="FILE", help="write cProfile stats of this process (app + consumer) to FILE")


async def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Set up store, broker, consumer and relay; offer the load; then the raw floor on the same broker."""
    if args.rate <= 0 or args.seconds <= 0 or args.keys < 1 or args.rounds < 1:
        raise SystemExit("--rate, --seconds, --keys and --rounds must be positive")
    load_before = os.getloadavg()
    run_tag = run_id()
    logs_dir = Path(tempfile.mkdtemp(prefix="tidings-bench-e2e-"))
    with progress.task(f"opening a fresh schema and {args.broker}", total=1):
        fresh = await FreshStore.open(args.database_url, f"bench_e2e_{run_tag}", pool=args.pool)
        try:
            target = await open_target(args.broker, run_tag, fresh)
        except BaseException:
            await fresh.close()
            raise
    pipe_fresh: FreshStore | None = None
    rounds: dict[str, list[dict[str, Any]]] = {"ours": [], "pipeline": [], "floor": []}
    try:
        pipe_fresh = await FreshStore.open(args.database_url, f"bench_e2e_{run_tag}_pipe", pool=1)
        # The three alternate (order reversed every other round), each round with the same warm-up
        # and a share of the measured seconds, so a slow phase of the machine falls on all alike.
        for round_no in range(args.rounds):
            order = list(rounds) if round_no % 2 == 0 else list(reversed(rounds))
            for contender in order:
                tag = f"{run_tag}.r{round_no}"
                if contender == "ours":
                    rounds["ours"].append(await _ours(args, progress, fresh, target, tag, logs_dir))
                elif contender == "pipeline":
                    rounds["pipeline"].append(await _pipeline(args, progress, pipe_fresh, target, tag))
                else:
                    rounds["floor"].append(await _floor(args, progress, target, tag))
        ours = _combine(rounds["ours"], "")
        raw = _combine(rounds["pipeline"], "raw_")
        floor = _combine(rounds["floor"], "floor_")
        # Latency of messages that never arrived cannot be measured: a contender that lost any fails.
        check_arrivals("ours", ours["delivered"] + ours["missing"], ours["missing"])
        check_arrivals("the raw pipeline", raw["raw_delivered"] + raw["raw_missing"], raw["raw_missing"])
        check_arrivals("the broker floor", floor["floor_delivered"] + floor["floor_missing"], floor["floor_missing"])
    finally:
        with progress.task("cleaning up", total=1):
            try:
                await target.close()
            finally:
                await fresh.close()
                if pipe_fresh is not None:
                    await pipe_fresh.close()
                shutil.rmtree(logs_dir, ignore_errors=True)
    ours_p99, raw_p99, floor_p99 = ours["p99_ms"], raw["raw_p99_ms"], floor["floor_p99_ms"]
    return {
        "name": NAME,
        "units": "ms (p99, commit → consumer)",
        "ours": ours_p99,
        "raw": raw_p99,
        "ratio": round(raw_p99 / ours_p99, 3) if ours_p99 else None,
        "ratio_is": "raw pipeline p99 / ours p99 (higher is better; 1.0 = as fast as the hand-written pipeline)",
        "p99_ratio": round(ours_p99 / raw_p99, 3) if raw_p99 else None,
        "p99_ratio_is": "ours p99 / raw pipeline p99 (goal <= 1.5)",
        "floor_ratio": round(floor_p99 / ours_p99, 3) if ours_p99 else None,
        "floor_ratio_is": "broker floor p99 / ours p99: 1.0 = no latency added over the broker's own; lower = more added",
        "goal": f"p99 <= 1.5 x the raw pipeline's, and p99 <= {GOAL_P99_MS:g} ms at {GOAL_RATE:g}/s",
        "goal_met": (
            ours_p99 <= 1.5 * raw_p99 and ours_p99 <= GOAL_P99_MS and ours["achieved_rate"] >= 0.98 * GOAL_RATE and ours["missing"] == 0
        ),
        **ours,
        **raw,
        **floor,
        "raw_does": (
            "INSERT into an outbox table + pg_notify in one statement (stamped when it returns); a LISTENing task claims "
            "FOR UPDATE SKIP LOCKED in batches of --batch-size, publishes them pipelined with the native client, marks "
            "them delivered (bench relay's hand-written relay); a native subscriber receives"
        ),
        "broker": args.broker,
        "store": args.store,
        "offered_rate": args.rate,
        "seconds": args.seconds,
        "keys": args.keys,
        "pool": args.pool,
        "max_in_flight": args.max_in_flight,
        "relay": (
            f"a separate `tidings relay --batch-size {args.batch_size}` process" if args.relay == "process"
            else f"in this process (Relay.run, batch {args.batch_size})"
        ),
        "consumer": "in this process, through the tidings adapter's subscribe() as a consumer group; acks as tasks",
        "raw_consumer": "NATS: native push consumer" if args.broker == "nats" else "Redis: native XREADGROUP on the same 32 streams",
        "floor_does": "the native client publishes each message at the offered rate, confirmation awaited; no database",
        "rounds": args.rounds,
        "load_average_before": [round(x, 2) for x in load_before],
        "versions": {"python": platform.python_version(), "psycopg": psycopg.__version__},
        "cpus": cpu_count(),
    }


def _combine(rounds: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    """One contender's rounds as one result: percentiles over every round's latencies, counts summed."""
    values = [v for r in rounds for v in r.pop("_values")]
    combined: dict[str, Any] = dict(rounds[-1])
    stats = percentiles(values)
    combined.update({f"{prefix}{name}": value for name, value in stats.items()})
    for name in ("missing", "late_starts", "commands", "command_failures", "delivered", "arrived_before_commit_stamp", "failures"):
        if f"{prefix}{name}" in combined:
            combined[f"{prefix}{name}"] = sum(r[f"{prefix}{name}"] for r in rounds)
    rate_key = f"{prefix}achieved_rate"
    combined[rate_key] = round(min(r[rate_key] for r in rounds), 1)
    return combined


async def _ours(
    args: argparse.Namespace, progress: Progress, fresh: FreshStore, target: Target, run_tag: str, logs_dir: Path
) -> dict[str, Any]:
    topic = f"bench.e2e.{run_tag}"
    app = make_app(fresh, topic)
    keys = partition_keys(args.keys)
    rng = random.Random(5)
    note = "n" * 300  # brings the published payload to about 500 bytes of JSON, like the relay benchmark's

    await target.prepare_topic(topic)
    # The commit is stamped where it happens: right after the store's commit statement returns,
    # for each outbox row it wrote (a wrapper on this store object only; nothing else changes).
    committed_at: dict[str, float] = {}
    store_commit = fresh.store.commit

    async def stamped_commit(changes: Any) -> None:
        await store_commit(changes)
        now = time.perf_counter()
        for entry in changes.outbox:
            committed_at[entry.event_id] = now

    fresh.store.commit = stamped_commit  # type: ignore[method-assign]
    consumer_broker = await target.adapter()
    subscription = await consumer_broker.subscribe([topic], f"bench-e2e-{run_tag}")
    arrived: dict[str, float] = {}
    acks: set[asyncio.Task[None]] = set()
    payload_sizes: list[int] = []

    async def consume() -> None:
        async for delivery in subscription:
            arrived[delivery.event_id] = time.perf_counter()
            if len(payload_sizes) < 1000:
                payload_sizes.append(len(delivery.payload))
            ack = asyncio.get_running_loop().create_task(delivery.ack())
            acks.add(ack)
            ack.add_done_callback(acks.discard)

    consumer = asyncio.get_running_loop().create_task(consume())
    processes = []
    relay_task: asyncio.Task[None] | None = None
    stop = asyncio.Event()
    try:
        with progress.task("starting the relay", total=1):
            if args.relay == "process":
                log = logs_dir / "relay.log"
                processes.append(spawn_relay(fresh, target.url, args.batch_size, log, profile=args.relay_profile))
                await wait_for_relays(fresh, processes, [log])
            else:
                relay = Relay(fresh.store, await target.adapter(), batch_size=args.batch_size)
                relay_task = asyncio.get_running_loop().create_task(relay.run(stop))
                deadline = time.monotonic() + 20
                while len(relay.owned) < 32 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)

        async def command(i: int) -> str:
            result = await app.handle(
                TickPrice(ticker_id=keys[rng.randrange(len(keys))], price_cents=10_000 + i % 5_000, volume=1 + i % 997, note=note),
                retries=3,
            )
            return result.published[0].event_id

        warm = int(args.rate * args.warmup)
        if warm:
            with progress.task("warming up", total=warm):
                warmed = await offer(warm, args.rate, command, max_in_flight=args.max_in_flight, advance=progress.advance)
                await wait_for_arrivals(set(warmed.done_at), arrived, 15)
        count = int(args.rate * args.seconds / args.rounds)
        profiler = cProfile.Profile() if args.profile else None
        with progress.task(f"ours: {args.rate:g} commands/s for {args.seconds / args.rounds:g} s", total=count):
            if profiler is not None:
                profiler.enable()
            offered = await offer(count, args.rate, command, max_in_flight=args.max_in_flight, advance=progress.advance)
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(args.profile)
        with progress.task("waiting for the last arrivals", total=1):
            await wait_for_arrivals(set(offered.done_at), arrived, 15)
    finally:
        stop.set()
        if relay_task is not None:
            await relay_task
        stop_relays(processes)
        await subscription.close()
        consumer.cancel()
        await asyncio.gather(consumer, *acks, return_exceptions=True)

    measured = {event_id: committed_at.get(event_id, at) for event_id, at in offered.done_at.items()}
    values, early = latencies(measured, arrived)
    command_lat = percentiles(offered.call_latencies)
    return {
        **percentiles(values),
        "_values": values,
        "achieved_rate": round(offered.rate, 1),
        "commands": len(offered.call_latencies),
        "command_failures": offered.failures,
        "delivered": len(values),
        "missing": len(offered.done_at) - len(values),
        "arrived_before_commit_stamp": early,
        "late_starts": offered.late_starts,
        "command_p50_ms": command_lat["p50_ms"],
        "command_p99_ms": command_lat["p99_ms"],
        "payload_bytes": round(sum(payload_sizes) / len(payload_sizes), 1) if payload_sizes else None,
    }


async def _floor(args: argparse.Namespace, progress: Progress, target: Target, run_tag: str) -> dict[str, Any]:
    topic = f"bench.e2e.{run_tag}.floor"
    warm, count = int(args.rate * args.warmup), int(args.rate * args.seconds / args.rounds)
    with progress.task("building raw messages", total=1):
        messages = [outgoing(e) for e in make_entries(warm + count, topic, partition_keys(args.keys), seed=3)]
    arrived: dict[str, float] = {}
    stop = await target.raw_consumer(topic, lambda event_id: arrived.__setitem__(event_id, time.perf_counter()))
    send = await target.raw_sender()
    try:

        def call_from(offset: int) -> Callable[[int], Awaitable[str]]:
            async def call(i: int) -> str:
                message = messages[offset + i]
                await send(message)
                return message.event_id

            return call

        if warm:
            with progress.task("floor: warming up", total=warm):
                warmed = await offer(warm, args.rate, call_from(0), max_in_flight=args.max_in_flight, advance=progress.advance, stamp="before")
                await wait_for_arrivals(set(warmed.done_at), arrived, 15)
        with progress.task(f"floor: {args.rate:g} messages/s for {args.seconds / args.rounds:g} s", total=count):
            offered = await offer(count, args.rate, call_from(warm), max_in_flight=args.max_in_flight, advance=progress.advance, stamp="before")
        with progress.task("raw: waiting for the last arrivals", total=1):
            await wait_for_arrivals(set(offered.done_at), arrived, 15)
    finally:
        await stop()
        await target.drop_topic(topic)
    values, _ = latencies(offered.done_at, arrived)
    stats = percentiles(values)
    return {
        "_values": values,
        "floor_p50_ms": stats["p50_ms"],
        "floor_p99_ms": stats["p99_ms"],
        "floor_max_ms": stats["max_ms"],
        "floor_achieved_rate": round(offered.rate, 1),
        "floor_delivered": len(values),
        "floor_missing": len(offered.done_at) - len(values),
        "floor_late_starts": offered.late_starts,
        "floor_payload_bytes": round(sum(len(m.payload) for m in messages) / len(messages), 1),
    }


_PIPE_INSERT = (
    "WITH row AS (INSERT INTO tidings_outbox (event_id, partition, partition_key, topic, event_type, envelope, payload) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING 1) SELECT pg_notify(%s, '') FROM row"
)


async def _pipeline(
    args: argparse.Namespace, progress: Progress, pipe_fresh: FreshStore, target: Target, run_tag: str
) -> dict[str, Any]:
    """The raw pipeline: insert + notify → a listener that claims and publishes natively → a native subscriber."""
    topic = f"bench.e2e.{run_tag}.pipeline"
    channel = f"bench_e2e_{run_tag.replace('.', '_')}"
    warm, count = int(args.rate * args.warmup), int(args.rate * args.seconds / args.rounds)
    await target.prepare_topic(topic)
    with progress.task("building pipeline rows", total=1):
        entries = make_entries(warm + count, topic, partition_keys(args.keys), seed=4)
        rows = [
            (e.event_id, e.partition, e.partition_key, e.topic, e.event_type, e.envelope.decode(), e.payload.decode(), channel)
            for e in entries
        ]
    arrived: dict[str, float] = {}
    stop_subscriber = await target.raw_consumer(topic, lambda event_id: arrived.__setitem__(event_id, time.perf_counter()))
    pool = AsyncConnectionPool(
        pipe_fresh.url, min_size=args.pool, max_size=args.pool, open=False,
        kwargs={"autocommit": True, "options": f"-c search_path={pipe_fresh.schema}"},
    )  # fmt: skip
    await pool.open(wait=True, timeout=10)
    listen_conn = await pipe_fresh.connect()
    claim_conn = await pipe_fresh.connect()
    await listen_conn.execute(f"LISTEN {channel}")
    wake = asyncio.Event()
    failures = 0

    async def listen() -> None:
        async for _ in listen_conn.notifies():
            wake.set()

    async def relay() -> None:
        nonlocal failures
        while True:
            await wake.wait()
            wake.clear()
            _, failed = await hand_written_drain(pipe_fresh, target, args.batch_size, None, claim_conn)
            failures += failed

    loop = asyncio.get_running_loop()
    listener, relayer = loop.create_task(listen()), loop.create_task(relay())
    try:

        def call_from(offset: int) -> Callable[[int], Awaitable[str]]:
            async def call(i: int) -> str:
                row = rows[offset + i]
                async with pool.connection() as conn:
                    await conn.execute(_PIPE_INSERT, row)
                return str(row[0])

            return call

        if warm:
            with progress.task("raw pipeline: warming up", total=warm):
                warmed = await offer(warm, args.rate, call_from(0), max_in_flight=args.max_in_flight, advance=progress.advance)
                await wait_for_arrivals(set(warmed.done_at), arrived, 15)
        with progress.task(f"raw pipeline: {args.rate:g} inserts/s for {args.seconds / args.rounds:g} s", total=count):
            offered = await offer(count, args.rate, call_from(warm), max_in_flight=args.max_in_flight, advance=progress.advance)
        with progress.task("raw pipeline: waiting for the last arrivals", total=1):
            await wait_for_arrivals(set(offered.done_at), arrived, 15)
    finally:
        listener.cancel()
        relayer.cancel()
        await asyncio.gather(listener, relayer, return_exceptions=True)
        await stop_subscriber()
        await listen_conn.close()
        await claim_conn.close()
        await pool.close()
        await target.drop_topic(topic)
        await pipe_fresh.store.run("TRUNCATE tidings_outbox")
    values, _ = latencies(offered.done_at, arrived)
    stats = percentiles(values)
    return {
        "_values": values,
        "raw_p50_ms": stats["p50_ms"],
        "raw_p99_ms": stats["p99_ms"],
        "raw_max_ms": stats["max_ms"],
        "raw_achieved_rate": round(offered.rate, 1),
        "raw_commands": len(offered.call_latencies),
        "raw_command_failures": offered.failures,
        "raw_delivered": len(values),
        "raw_missing": len(offered.done_at) - len(values),
        "raw_late_starts": offered.late_starts,
        "raw_failures": failures,
    }
