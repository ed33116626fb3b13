"""Messages/s a Consumer applies exactly once (inbox + a one-row effect) vs the same work hand-written with the same clients.

Both contenders read the same prefilled stream of `--messages` integration events (default
50,000: ~500-byte JSON payloads, the Application's envelope in headers, keys spread over `--keys`
aggregates) as consumer groups of their own, and must end with every message applied once: one row
in a bench table AND one inbox row per message, committed together, then acked.

`ours`: a `tidings.runtime.Consumer` with one handler that queues the effect with `ctx.write`
(`--effect run` awaits `ctx.tx.run` instead), over tidings' broker adapter and store, with
`--concurrency` transactions in flight and up to `--batch-size` messages per transaction.

`raw`: the hand-written equivalent with the same clients and the same concurrency — NATS: nats-py
pull consumer + psycopg, per fetched batch one transaction (inbox rows by one INSERT … unnest …
RETURNING, effects of the new ones by executemany), commit, then `msg.ack()`; local: sqlite3 reading
the log table, the same transaction, then the offset written. Raw keeps no order per key across its
workers and has no retries or dead letters: it is the clients' and the database's limit.
`raw_confirmed_ack` (NATS) is raw acking with `ack_sync`, the confirmed ack tidings' adapter uses:
`ratio_vs_confirmed_ack` compares like with like, `ratio` also charges ours for the confirmation.

The machine is shared, so wall-clock rates wander; `client_cpu_us_per_message` (this process's CPU
per message) is the steadier figure for comparing the client side. `--rounds N` runs the contenders
N times, in reversed order every other round, and keeps the best of each. Ours' clock starts once
its shards are subscribed, as raw's starts after its subscription exists.

Each contender gets a fresh database (PostgreSQL schema or SQLite file); the counts of effect and
inbox rows are checked afterwards: a contender that lost or doubled messages fails the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec

from bench.harness import Progress
from tidings.brokers.base import Broker, OutgoingMessage
from tidings.brokers.headers import envelope_to_headers
from tidings.messaging import IntegrationEvent, new_id, utc_now
from tidings.messaging.partitioning import DEFAULT_PARTITIONS, partition_of
from tidings.runtime.consumer import Consumer, HandlerContext
from tidings.store import Store, open_store

NAME = "consume"

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
TOPIC = "bench.Ticked"
PAYLOAD_BYTES = 500
EFFECTS_DDL = {
    "postgresql": "CREATE TABLE bench_effects (event_id TEXT PRIMARY KEY, key TEXT NOT NULL, n INTEGER NOT NULL)",
    "sqlite": "CREATE TABLE bench_effects (event_id TEXT PRIMARY KEY, key TEXT NOT NULL, n INTEGER NOT NULL)",
}
INSERT_EFFECT = "INSERT INTO bench_effects (event_id, key, n) VALUES (?, ?, ?)"


class Ticked(IntegrationEvent, name=TOPIC):
    """What the benchmark's messages carry: a key, its running number and some filler."""

    key: str
    n: int
    price_cents: int
    note: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the consume benchmark."""
    parser.add_argument("--store", choices=["postgresql", "sqlite"], default="postgresql", help="database (default postgresql)")
    parser.add_argument("--broker", choices=["nats", "local"], default="nats", help="broker (default nats)")
    parser.add_argument("--messages", type=int, default=50_000, help="messages in the prefilled stream (default 50000)")
    parser.add_argument("--keys", type=int, default=5_000, help="partition keys the messages spread over (default 5000)")
    parser.add_argument("--concurrency", type=int, default=8, help="transactions in flight, both contenders (default 8)")
    parser.add_argument("--batch-size", type=int, default=200, help="most messages per transaction (default 200)")
    parser.add_argument("--effect", choices=["write", "run"], default="write", help="ours: ctx.write (queued) or ctx.tx.run")
    parser.add_argument("--pull-batch", type=int, default=None, help="ours: the NATS adapter's pull batch (default: its own)")
    parser.add_argument("--prefetch", type=int, default=None, help="ours: messages held at once (default: the Consumer's)")
    parser.add_argument("--linger", type=float, default=0.005, help="ours: seconds a batch may wait to fill while others run")
    parser.add_argument("--rounds", type=int, default=1, help="measure each contender this many times, alternating; best counts")
    parser.add_argument("--database-url", default=DEFAULT_POSTGRES_URL, help="PostgreSQL server")
    parser.add_argument("--nats-url", default=DEFAULT_NATS_URL, help="NATS server (a stream of this run's own is created)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up on a contender after this many seconds")
    parser.add_argument("--profile", metavar="FILE", help="write cProfile stats of ours to FILE (slows ours)")


# --- messages ---------------------------------------------------------------------------------


def make_messages(count: int, keys: int, *, seed: int = 7) -> list[OutgoingMessage]:
    """`count` messages as the relay publishes them: envelope headers, ~500-byte payloads, numbered per key."""
    rng = random.Random(seed)
    names = [f"{rng.getrandbits(64):016x}-{i:05d}" for i in range(keys)]
    numbers: dict[str, int] = {}
    stamp = utc_now()
    correlation = new_id()
    messages = []
    for _ in range(count):
        key = names[rng.randrange(keys)]
        n = numbers[key] = numbers.get(key, 0) + 1
        event_id = new_id()
        envelope = {
            "event_id": event_id, "event_type": TOPIC, "schema_version": 1, "occurred_at": stamp.isoformat(),
            "aggregate_type": "Ticker", "aggregate_id": key, "aggregate_version": n, "correlation_id": correlation,
            "causation_id": new_id(), "user_id": "svc-bench", "tenant": None, "source": "bench",
        }
        payload = msgspec.json.encode({"key": key, "n": n, "price_cents": rng.randrange(100, 10**6), "note": ""})
        payload = msgspec.json.encode(
            {"key": key, "n": n, "price_cents": rng.randrange(100, 10**6), "note": "n" * max(0, PAYLOAD_BYTES - len(payload))}
        )
        messages.append(
            OutgoingMessage(
                topic=TOPIC, key=key, partition=partition_of(key, DEFAULT_PARTITIONS), event_id=event_id,
                headers=envelope_to_headers(msgspec.json.encode(envelope)), payload=payload,
            )
        )
    return messages


# --- databases --------------------------------------------------------------------------------


class Database:
    """A fresh database for one contender: a PostgreSQL schema or a SQLite file, with the bench table."""

    def __init__(self, kind: str, url: str, tag: str) -> None:
        self.kind = kind
        self.server_url = url
        self.tag = tag
        self.schema = f"bench_consume_{tag}"
        self.path = Path(tempfile.gettempdir()) / f"bench-consume-{tag}.db"
        self.store: Store | None = None

    @property
    def url(self) -> str:
        """The URL tidings opens it with."""
        if self.kind == "postgresql":
            return f"{self.server_url}?options={quote(f'-c search_path={self.schema}')}"
        return f"sqlite:///{self.path}"

    async def open(self, pool: int) -> Store:
        """Create, migrate, add the bench table; return the tidings store on it."""
        if self.kind == "postgresql":
            self.store = await open_store(self.server_url, schema=self.schema, migrate=True, min_size=pool, max_size=pool)
        else:
            self.store = await open_store(self.url)
        await self.store.run(EFFECTS_DDL[self.kind])
        return self.store

    async def counts(self) -> tuple[int, int]:
        """Rows in the bench table and in the inbox."""
        assert self.store is not None
        effects = (await self.store.fetch("SELECT count(*) FROM bench_effects"))[0][0]
        inbox = (await self.store.fetch("SELECT count(*) FROM tidings_inbox"))[0][0]
        return int(effects), int(inbox)

    async def close(self) -> None:
        """Drop the schema or delete the file."""
        if self.store is None:
            return
        if self.kind == "postgresql":
            await self.store.drop_schema()  # type: ignore[attr-defined]
        await self.store.close()
        if self.kind == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            for lock in self.path.parent.glob(f"{self.path.name}.consumer-*.lock"):
                lock.unlink(missing_ok=True)  # the consumer's shard lock files beside the database


# --- the broker of the run --------------------------------------------------------------------


class Stream:
    """The prefilled messages: a NATS stream of this run's own, or the local log of each contender's database."""

    def __init__(self, kind: str, nats_url: str, tag: str, pull_batch: int | None = None) -> None:
        self.kind = kind
        self.nats_url = nats_url
        self.pull_batch = pull_batch
        self.stream = f"BENCHCONSUME{tag.upper()}"
        self.prefix = f"benchconsume{tag}"
        self._brokers: list[Broker] = []

    async def adapter(self, store: Store) -> Broker:
        """The tidings broker the consumer reads (and the prefill writes) through."""
        if self.kind == "nats":
            from tidings.brokers.nats import NatsBroker

            options = {"batch": self.pull_batch} if self.pull_batch else {}
            broker: Broker = NatsBroker([self.nats_url], stream=self.stream, prefix=self.prefix, **options)
        else:
            from tidings.brokers.local import LocalBroker

            broker = LocalBroker(store, poll_interval=0.01)
        await broker.connect()
        self._brokers.append(broker)
        return broker

    async def fill(self, broker: Broker, messages: list[OutgoingMessage], advance: Callable[[int], None]) -> None:
        """Publish every message (once per NATS run; into each local log)."""
        for start in range(0, len(messages), 2000):
            chunk = messages[start : start + 2000]
            results = await broker.publish(chunk)
            failed = [r for r in results if r is not None]
            if failed:
                raise SystemExit(f"prefill failed: {failed[0]}")
            advance(len(chunk))

    async def close(self) -> None:
        """Close adapters and delete the NATS stream."""
        for broker in self._brokers:
            await broker.close()
        if self.kind == "nats":
            import nats

            nc = await nats.connect(self.nats_url)
            try:
                await nc.jetstream().delete_stream(self.stream)
            except Exception:
                pass
            await nc.close()


# --- ours -------------------------------------------------------------------------------------


async def run_ours(
    args: argparse.Namespace, store: Store, broker: Broker, group: str, advance: Callable[[int], None], profiler: cProfile.Profile | None
) -> dict[str, Any]:
    """Drain the stream through a Consumer; seconds until every message is committed and acked."""
    consumer = Consumer(
        group, store, broker, topics=[TOPIC], concurrency=args.concurrency, batch_size=args.batch_size, linger=args.linger, prefetch=args.prefetch,
        inbox_retention=None,
    )
    queued = args.effect == "write"

    @consumer.handler(Ticked)
    async def apply(event: Ticked, ctx: HandlerContext) -> None:
        if queued:
            ctx.write(INSERT_EFFECT, (ctx.envelope.event_id, event.key, event.n))
        else:
            await ctx.tx.run(INSERT_EFFECT, (ctx.envelope.event_id, event.key, event.n))

    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(consumer.run(stop))
    # The clock starts once every owned shard is read, as raw's starts after its subscription and
    # connections exist: start-up (connecting, owning shards, subscribing) is not consuming.
    ready_by = time.perf_counter() + args.timeout
    while not consumer.subscribed and not task.done() and time.perf_counter() < ready_by:
        await asyncio.sleep(0.001)
    if profiler is not None:
        profiler.enable()
    start = time.perf_counter()
    deadline = start + args.timeout
    seen = 0
    while consumer.stats.applied < args.messages or consumer.in_flight:
        if task.done():
            task.result()
        if time.perf_counter() > deadline:
            break
        await asyncio.sleep(0.005)
        advance(consumer.stats.applied - seen)
        seen = consumer.stats.applied
    seconds = time.perf_counter() - start
    if profiler is not None:
        profiler.disable()
    stop.set()
    await task
    stats = consumer.stats
    return {"seconds": seconds, "applied": stats.applied, "batches": stats.batches, "duplicates": stats.duplicates}


def check_counts(who: str, messages: int, *, effects: int, inbox: int) -> None:
    """Fail the benchmark unless every message was applied exactly once (one effect and one inbox row each)."""
    if effects != messages or inbox != messages:
        raise SystemExit(
            f"bench consume: {who} is wrong: {effects:,} effect rows and {inbox:,} inbox rows for {messages:,} messages, "
            "so its rate means nothing"
        )


# --- raw --------------------------------------------------------------------------------------


async def run_raw_nats(
    args: argparse.Namespace, db: Database, stream: Stream, group: str, advance: Callable[[int], None], *, confirmed: bool = False
) -> dict[str, Any]:
    """nats-py pull consumer + psycopg: per fetched batch, inbox + effects in one transaction, commit, ack.

    ``confirmed`` acks with ``ack_sync`` (all of a batch at once), as tidings' NATS adapter does;
    otherwise with the plain, unconfirmed ``ack`` most hand-written consumers use.
    """
    import nats
    import psycopg
    from nats.js import api

    nc = await nats.connect(args.nats_url)
    js = nc.jetstream()
    config = api.ConsumerConfig(
        durable_name=group, ack_policy=api.AckPolicy.EXPLICIT, ack_wait=30, max_ack_pending=20_000,
        deliver_policy=api.DeliverPolicy.ALL, filter_subject=f"{stream.prefix}.{TOPIC}.*",
    )
    subscription = await js.pull_subscribe(f"{stream.prefix}.{TOPIC}.*", durable=group, stream=stream.stream, config=config)
    connections = [
        await psycopg.AsyncConnection.connect(args.database_url, options=f"-c search_path={db.schema}")
        for _ in range(args.concurrency)
    ]
    done = 0
    batches = 0
    start = time.perf_counter()
    deadline = start + args.timeout

    async def worker(conn: Any) -> None:
        nonlocal done, batches
        while done < args.messages and time.perf_counter() < deadline:
            try:
                msgs = await subscription.fetch(args.batch_size, timeout=0.5)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                continue
            ids = [m.headers["tidings-event_id"] for m in msgs]
            async with conn.transaction():
                cur = await conn.execute(
                    "INSERT INTO tidings_inbox (consumer, event_id) SELECT %s, unnest(%s::text[]) "
                    "ON CONFLICT DO NOTHING RETURNING event_id",
                    (group, ids),
                )
                new = {row[0] for row in await cur.fetchall()}
                rows = []
                for m in msgs:
                    event_id = m.headers["tidings-event_id"]
                    if event_id in new:
                        new.discard(event_id)
                        body = json.loads(m.data)
                        rows.append((event_id, body["key"], body["n"]))
                async with conn.cursor() as many:
                    await many.executemany(INSERT_EFFECT.replace("?", "%s"), rows)
            if confirmed:
                await asyncio.gather(*(m.ack_sync() for m in msgs))
            else:
                for m in msgs:
                    await m.ack()
            done += len(msgs)
            batches += 1
            advance(len(msgs))

    await asyncio.gather(*(worker(conn) for conn in connections))
    seconds = time.perf_counter() - start
    for conn in connections:
        await conn.close()
    await nc.close()
    return {"seconds": seconds, "applied": done, "batches": batches}


async def run_raw_local(args: argparse.Namespace, db: Database, group: str, advance: Callable[[int], None]) -> dict[str, Any]:
    """sqlite3 reading the local log from the group's offset: inbox + effects in one transaction, then the offset."""
    conn = sqlite3.connect(db.path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    offset = 0
    done = 0
    batches = 0
    start = time.perf_counter()
    values = ", ".join(["(?, ?)"] * args.batch_size)
    while done < args.messages:
        rows = conn.execute(
            "SELECT position, event_id, payload FROM tidings_local_log WHERE topic = ? AND position > ? ORDER BY position LIMIT ?",
            (TOPIC, offset, args.batch_size),
        ).fetchall()
        if not rows:
            await asyncio.sleep(0.01)
            continue
        conn.execute("BEGIN IMMEDIATE")
        sql = values if len(rows) == args.batch_size else ", ".join(["(?, ?)"] * len(rows))
        new = {
            r[0]
            for r in conn.execute(
                f"INSERT INTO tidings_inbox (consumer, event_id) VALUES {sql} ON CONFLICT DO NOTHING RETURNING event_id",
                [v for _, event_id, _ in rows for v in (group, event_id)],
            ).fetchall()
        }
        effects = []
        for _, event_id, payload in rows:
            if event_id in new:
                body = json.loads(payload)
                effects.append((event_id, body["key"], body["n"]))
        conn.executemany(INSERT_EFFECT, effects)
        conn.execute("COMMIT")
        offset = rows[-1][0]
        conn.execute(
            "INSERT INTO tidings_local_offsets (group_name, topic, position) VALUES (?, ?, ?) "
            "ON CONFLICT (group_name, topic) DO UPDATE SET position = excluded.position",
            (group, TOPIC, offset),
        )
        done += len(rows)
        batches += 1
        advance(len(rows))
        await asyncio.sleep(0)
    seconds = time.perf_counter() - start
    conn.close()
    return {"seconds": seconds, "applied": done, "batches": batches}


# --- the run ----------------------------------------------------------------------------------


async def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Prefill once, then drain with ours and raw in alternating rounds; report the best of each."""
    if args.broker == "local" and args.store != "sqlite":
        raise SystemExit("--broker local is measured with --store sqlite (the local log lives in the store)")
    if args.broker == "nats" and args.store != "postgresql":
        raise SystemExit("--broker nats is measured with --store postgresql")
    load_before = os.getloadavg()
    tag = new_id().replace("-", "")[-10:]
    with progress.task(f"building {args.messages:,} messages", total=1):
        messages = make_messages(args.messages, args.keys)
    stream = Stream(args.broker, args.nats_url, tag, args.pull_batch)
    profiler = cProfile.Profile() if args.profile else None
    contenders = ["ours", "raw"] + (["raw_confirmed_ack"] if args.broker == "nats" else [])
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
    filled = False
    try:
        for round_no in range(args.rounds):
            # Every other round runs the contenders in reverse, so a slow phase of the machine hits all alike.
            order = list(enumerate(contenders))
            for index, contender in order if round_no % 2 == 0 else reversed(order):
                db = Database(args.store, args.database_url, f"{tag}c{index}r{round_no}")
                try:
                    store = await db.open(pool=args.concurrency + 2)
                    broker = await stream.adapter(store)
                    if args.broker == "local" or not filled:
                        with progress.task(f"prefilling {args.broker} with {args.messages:,} messages", total=args.messages):
                            await stream.fill(broker, messages, progress.advance)
                        filled = True
                    group = f"bench-{contender.replace('_', '-')}-{round_no}"
                    cpu = time.process_time()
                    with progress.task(f"{contender}: round {round_no + 1}", total=args.messages):
                        if contender == "ours":
                            outcome = await run_ours(args, store, broker, group, progress.advance, profiler)
                        elif args.broker == "nats":
                            confirmed = contender == "raw_confirmed_ack"
                            outcome = await run_raw_nats(args, db, stream, group, progress.advance, confirmed=confirmed)
                        else:
                            outcome = await run_raw_local(args, db, group, progress.advance)
                    # This process's CPU per message: what the client side costs, whatever the host's load.
                    cpu_us = (time.process_time() - cpu) / args.messages * 1e6
                    effects, inbox = await db.counts()
                    outcome.update(
                        messages_per_s=round(args.messages / outcome["seconds"], 1), effects=effects, inbox=inbox,
                        seconds=round(outcome["seconds"], 3), client_cpu_us_per_message=round(cpu_us, 1),
                    )
                    # A contender that lost or doubled messages has no rate worth printing: the benchmark fails.
                    check_counts(f"{contender} round {round_no + 1}", args.messages, effects=effects, inbox=inbox)
                    rounds[contender].append(outcome)
                finally:
                    await db.close()
    finally:
        await stream.close()
    if profiler is not None:
        profiler.dump_stats(args.profile)
        progress.log(f"cProfile stats of ours written to {args.profile}")
    best = {name: max(r["messages_per_s"] for r in results) for name, results in rounds.items()}
    ours, raw = best["ours"], best["raw"]
    extra = {}
    if "raw_confirmed_ack" in best:
        # The adapter confirms every ack (a request/response each); this compares like with like.
        extra = {"raw_confirmed_ack": best["raw_confirmed_ack"], "ratio_vs_confirmed_ack": round(ours / best["raw_confirmed_ack"], 3)}
    return {
        "name": NAME,
        "ours": ours,
        "raw": raw,
        "ratio": round(ours / raw, 3),
        **extra,
        "units": "messages/s",
        "store": args.store,
        "broker": args.broker,
        "messages": args.messages,
        "keys": args.keys,
        "concurrency": args.concurrency,
        "batch_size": args.batch_size,
        "effect": args.effect,
        "linger": args.linger,
        "pull_batch": args.pull_batch,
        "prefetch": args.prefetch,
        "goals": {"ratio": 0.7, "ours": 10_000},
        "rounds": rounds,
        "load_average_before": [round(x, 2) for x in load_before],
        "cpus": os.cpu_count(),
    }
