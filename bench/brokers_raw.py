"""Shared plumbing of the relay benchmarks: outbox rows, fresh stores, and each broker twice (tidings' adapter, native client).

A `Target` is one broker set up for one run: names that no other run uses (stream, exchange,
topics), the tidings adapter configured for them (`adapter()`, and `url` for relay processes),
the broker's own client publishing the same messages with its best pipelining (`raw_publish`),
and the clean-up of everything the run created. Messages are built once by `make_entries` in the
shape the Application writes (an envelope, a ~500-byte JSON payload, keys spread over many
aggregates), then either copied into the outbox (`fill_outbox`) or turned into the adapter's
messages (`outgoing`) for the raw contenders.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec
import psycopg

from tidings.messaging.partitioning import DEFAULT_PARTITIONS, partition_of
from tidings.brokers.base import Broker, OutgoingMessage
from tidings.brokers.headers import envelope_to_headers
from tidings.messaging import new_id, utc_now
from tidings.store import Store, open_store
from tidings.store.records import OutboxEntry

__all__ = [
    "BROKERS",
    "DEFAULT_POSTGRES_URL",
    "Counting",
    "cpu_count",
    "FreshStore",
    "Target",
    "fill_outbox",
    "make_entries",
    "open_target",
    "outgoing",
    "partition_keys",
    "percentiles",
    "run_id",
    "spawn_relay",
    "stop_relays",
    "wait_for_relays",
]

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
BROKERS = ("nats", "redis", "rabbitmq", "kafka", "local")
DEFAULT_URLS = {
    "nats": "nats://127.0.0.1:4222",
    "redis": "redis://127.0.0.1:6379/0",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/",
}

#: Roughly what one integration event of a real context weighs as JSON.
PAYLOAD_BYTES = 500
EVENT_TYPE = "market.PriceTicked"
AGGREGATE_TYPE = "Ticker"
SOURCE = "market"

_encode = msgspec.json.encode
_REPO = Path(__file__).resolve().parent.parent


def run_id() -> str:
    """A short id that makes this run's schemas, streams, exchanges and topics its own."""
    return new_id().replace("-", "")[-10:]


# --- messages ---------------------------------------------------------------------------------


def partition_keys(count: int, seed: int = 11) -> list[str]:
    """`count` aggregate ids to spread the rows over (stable for a seed, so runs are comparable)."""
    rng = random.Random(seed)
    return [f"{rng.getrandbits(64):016x}-{i:05d}" for i in range(count)]


def make_entries(count: int, topic: str, keys: Sequence[str], *, seed: int = 7) -> list[OutboxEntry]:
    """`count` outbox entries as the Application writes them: fresh event ids, keys at random, versions per key."""
    rng = random.Random(seed)
    versions: dict[str, int] = {}
    now = utc_now()
    stamp = now.isoformat().replace("+00:00", "Z")
    correlation = new_id()
    base = {"currency": "EUR", "venue": "XETRA", "source_feed": "bench-feed-07", "observed_at": stamp}
    filler = _filler_length(keys[0], base)
    entries = []
    for _ in range(count):
        key = keys[rng.randrange(len(keys))]
        version = versions[key] = versions.get(key, 0) + 1
        event_id = new_id()
        envelope = {
            "event_id": event_id,
            "event_type": EVENT_TYPE,
            "schema_version": 1,
            "occurred_at": stamp,
            "aggregate_type": AGGREGATE_TYPE,
            "aggregate_id": key,
            "aggregate_version": version,
            "correlation_id": correlation,
            "causation_id": new_id(),
            "user_id": "svc-market-feed",
            "tenant": None,
            "source": SOURCE,
        }
        payload = {
            "ticker_id": key,
            "n": version,
            "price_cents": rng.randrange(100, 1_000_000),
            "volume": rng.randrange(1, 100_000),
            **base,
            "note": "n" * filler,
        }
        entries.append(
            OutboxEntry(
                event_id=event_id,
                partition=partition_of(key, DEFAULT_PARTITIONS),
                partition_key=key,
                topic=topic,
                event_type=EVENT_TYPE,
                envelope=_encode(envelope),
                payload=_encode(payload),
            )
        )
    return entries


def _filler_length(key: str, base: dict[str, str]) -> int:
    """How long the `note` must be for a payload of about PAYLOAD_BYTES."""
    sample = {"ticker_id": key, "n": 1, "price_cents": 123456, "volume": 12345, **base, "note": ""}
    return max(0, PAYLOAD_BYTES - len(_encode(sample)))


def outgoing(entry: OutboxEntry) -> OutgoingMessage:
    """The message the relay would hand the adapter for this entry (same headers mapping)."""
    return OutgoingMessage(
        topic=entry.topic,
        key=entry.partition_key,
        partition=entry.partition,
        event_id=entry.event_id,
        headers=envelope_to_headers(entry.envelope),
        payload=entry.payload,
    )


# --- the store --------------------------------------------------------------------------------


@dataclass
class FreshStore:
    """A migrated PostgreSQL schema of its own, the tidings store on it, and its URL for other processes."""

    url: str
    schema: str
    store: Store

    @classmethod
    async def open(cls, url: str, schema: str, *, pool: int = 10) -> FreshStore:
        """Create and migrate `schema`, and open a store on it."""
        store = await open_store(url, schema=schema, migrate=True, min_size=1, max_size=pool)
        return cls(url, schema, store)

    @property
    def process_url(self) -> str:
        """The URL a relay process opens this store with (the schema rides in the connection options)."""
        return f"{self.url}?options={quote(f'-c search_path={self.schema}')}"

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        """A plain autocommit connection in the schema (for filling, counting and the local broker's raw)."""
        return await psycopg.AsyncConnection.connect(self.url, autocommit=True, options=f"-c search_path={self.schema}")

    async def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The first column of the first row of one query."""
        rows = await self.store.fetch(sql, params)
        return rows[0][0] if rows else None

    async def backlog(self) -> int:
        """Outbox rows not yet delivered (the partial index makes this cheap)."""
        return int(await self.scalar("SELECT count(*) FROM tidings_outbox WHERE delivered_at IS NULL AND parked_at IS NULL"))

    async def close(self) -> None:
        """Close the store and drop the schema."""
        await self.store.close()
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


async def fill_outbox(
    fresh: FreshStore, entries: Sequence[OutboxEntry], advance: Callable[[int], None] | None = None, *, chunk: int = 10_000
) -> float:
    """Write `entries` into the outbox by COPY in one transaction, ANALYZE it, commit; returns the commit time (time.time()).

    One transaction, so the rows appear at once: a relay already waiting sees all of them together.
    ANALYZE runs inside it (it counts the transaction's own rows), so the claim query is planned
    on real statistics, as it would be on a table autovacuum has seen.
    """
    async with await fresh.connect() as conn:
        async with conn.transaction():
            for start in range(0, len(entries), chunk):
                part = entries[start : start + chunk]
                async with conn.cursor() as cur, cur.copy(
                    "COPY tidings_outbox (event_id, partition, partition_key, topic, event_type, envelope, payload) FROM STDIN"
                ) as copy:
                    for e in part:
                        await copy.write_row(
                            (e.event_id, e.partition, e.partition_key, e.topic, e.event_type, e.envelope.decode(), e.payload.decode())
                        )
                if advance is not None:
                    advance(len(part))
            await conn.execute("ANALYZE tidings_outbox")
        return time.time()


# --- brokers ----------------------------------------------------------------------------------


class Counting:
    """A broker wrapper that reports confirmed messages as they come back (for progress bars); adds one call per batch."""

    def __init__(self, inner: Broker, on_confirmed: Callable[[int], None]) -> None:
        self.inner = inner
        self.url = inner.url
        self.on_confirmed = on_confirmed

    @property
    def max_message_bytes(self) -> int:
        """The wrapped broker's limit."""
        return self.inner.max_message_bytes

    async def connect(self) -> None:
        """Connect the wrapped broker."""
        await self.inner.connect()

    async def publish(self, messages: Sequence[OutgoingMessage]) -> list[BaseException | None]:
        """Publish through the wrapped broker and count what it confirmed."""
        results = await self.inner.publish(messages)
        self.on_confirmed(sum(1 for r in results if r is None))
        return results

    async def subscribe(self, topics: Sequence[str], group: str) -> Any:
        """Subscribe through the wrapped broker."""
        return await self.inner.subscribe(topics, group)

    async def close(self) -> None:
        """Close the wrapped broker."""
        await self.inner.close()


@dataclass
class RawResult:
    """One raw publishing run: how, how long, how many confirmed."""

    variant: str
    seconds: float
    confirmed: int
    failed: int

    @property
    def rate(self) -> float:
        """Confirmed messages per second."""
        return self.confirmed / self.seconds if self.seconds else 0.0


@dataclass
class Target:
    """One broker, set up for one run: tidings' adapter and the native client on names of this run only."""

    name: str
    run: str
    url: str
    fresh: FreshStore
    _adapters: list[Broker] = field(default_factory=list)

    async def adapter(self) -> Broker:
        """A connected tidings broker for this run's names (closed by `close`)."""
        from tidings.brokers import open_broker

        broker = await open_broker(self.url, store=self.fresh.store, **self.adapter_options())
        self._adapters.append(broker)
        return broker

    def adapter_options(self) -> dict[str, Any]:
        """Keyword options for the adapter beyond the URL."""
        return {}

    async def prepare_topic(self, topic: str) -> None:
        """Make `topic` ready to receive (RabbitMQ: a bound queue, so messages are routed and stored)."""

    def variants(self, windows: Sequence[int]) -> list[tuple[str, int]]:
        """The raw publishing methods to try, each with each window size."""
        return [("pipelined", w) for w in windows]

    async def raw_publish(
        self, messages: Sequence[OutgoingMessage], variant: str, window: int, advance: Callable[[int], None] | None = None
    ) -> RawResult:
        """Publish `messages` with the broker's own client, `window` messages in flight at a time."""
        raise NotImplementedError

    async def stored(self, topic: str) -> int | None:
        """How many messages of `topic` the broker holds now (None if it cannot say cheaply)."""
        return None

    async def raw_sender(self) -> Callable[[OutgoingMessage], Awaitable[None]]:
        """A coroutine function that publishes one message with the native client and waits for its confirmation."""
        raise SystemExit(f"the e2e raw contender is not written for {self.name}")

    async def raw_consumer(self, topic: str, on_receive: Callable[[str], None]) -> Callable[[], Awaitable[None]]:
        """Consume `topic` with the native client, calling `on_receive(event_id)` on arrival; returns a stop function."""
        raise SystemExit(f"the e2e raw contender is not written for {self.name}")

    async def drop_topic(self, topic: str) -> None:
        """Remove what `topic` left on the broker (between phases, to keep the broker's size steady)."""

    async def close(self) -> None:
        """Close the adapters and remove every stream, exchange, queue or key of this run."""
        for broker in self._adapters:
            try:
                await asyncio.wait_for(broker.close(), 15)
            except Exception as exc:  # clean-up goes on: the rest must still be removed
                print(f"bench: closing {self.name} adapter: {exc!r}", file=sys.stderr)
        self._adapters.clear()


def _timed(variant: str, start: float, confirmed: int, failed: int) -> RawResult:
    return RawResult(variant, time.perf_counter() - start, confirmed, failed)


def _windows(messages: Sequence[OutgoingMessage], window: int) -> list[Sequence[OutgoingMessage]]:
    return [messages[i : i + window] for i in range(0, len(messages), window)]


# NATS ------------------------------------------------------------------------------------------


class NatsTarget(Target):
    """NATS JetStream: a stream and subject prefix of this run; raw is nats-py on the same subjects and headers."""

    def __init__(self, run: str, fresh: FreshStore, server: str = DEFAULT_URLS["nats"]) -> None:
        self.stream = f"BENCH_{run}"
        self.prefix = f"bench{run}"
        super().__init__("nats", run, f"{server}?stream={self.stream}&prefix={self.prefix}", fresh)
        self.server = server
        self._nc: Any = None

    async def _client(self) -> Any:
        import nats

        if self._nc is None:
            self._nc = await nats.connect(self.server, name="tidings-bench-raw")
        return self._nc

    def subject(self, topic: str, partition: int) -> str:
        """The subject the adapter publishes `topic`/`partition` to (its own mapping)."""
        from tidings.brokers.nats import subject_token

        return f"{self.prefix}.{subject_token(topic)}.{partition}"

    def native_headers(self, m: OutgoingMessage) -> dict[str, str]:
        """The headers the adapter sends for `m`: its own, the routing ones, the de-duplication id, the stream."""
        return {
            **m.headers,
            "tidings-topic": m.topic,
            "tidings-key": m.key,
            "tidings-partition": str(m.partition),
            "Nats-Msg-Id": m.event_id,
            "Nats-Expected-Stream": self.stream,
        }

    def variants(self, windows: Sequence[int]) -> list[tuple[str, int]]:
        # Three ways to pipeline with nats-py: concurrent js.publish requests; js.publish_async
        # futures gathered per window; plain publishes with a reply subject whose acks one wildcard
        # subscription collects (what the adapter does).
        return [(v, w) for v in ("js.publish-gather", "js.publish_async", "publish-reply-gather") for w in windows]

    async def raw_publish(
        self, messages: Sequence[OutgoingMessage], variant: str, window: int, advance: Callable[[int], None] | None = None
    ) -> RawResult:
        nc = await self._client()
        prepared = [(self.subject(m.topic, m.partition), m.payload, self.native_headers(m)) for m in messages]
        confirmed = failed = 0
        if variant in ("js.publish-gather", "js.publish_async"):
            js = nc.jetstream(timeout=10, publish_async_max_pending=max(window, 4000))
            start = time.perf_counter()
            for i in range(0, len(prepared), window):
                part = prepared[i : i + window]
                if variant == "js.publish_async":
                    futures = [await js.publish_async(s, p, headers=h) for s, p, h in part]
                    acks = await asyncio.gather(*futures, return_exceptions=True)
                else:
                    acks = await asyncio.gather(*(js.publish(s, p, headers=h) for s, p, h in part), return_exceptions=True)
                ok = sum(1 for a in acks if not isinstance(a, BaseException))
                confirmed, failed = confirmed + ok, failed + len(part) - ok
                if advance:
                    advance(len(part))
            return _timed(f"{variant}/{window}", start, confirmed, failed)
        inbox = nc.new_inbox()
        loop = asyncio.get_running_loop()
        waiting: dict[str, asyncio.Future[bytes]] = {}

        async def on_ack(msg: Any) -> None:
            future = waiting.pop(msg.subject.rsplit(".", 1)[-1], None)
            if future is not None and not future.done():
                future.set_result(msg.data)

        sub = await nc.subscribe(f"{inbox}.*", cb=on_ack)
        try:
            start = time.perf_counter()
            token = 0
            for i in range(0, len(prepared), window):
                part = prepared[i : i + window]
                futures = []
                for s, p, h in part:
                    token += 1
                    future = waiting[str(token)] = loop.create_future()
                    futures.append(future)
                    await nc.publish(s, p, reply=f"{inbox}.{token}", headers=h)
                done, late = await asyncio.wait(futures, timeout=10)
                ok = sum(1 for f in done if b'"error"' not in f.result())
                confirmed, failed = confirmed + ok, failed + len(part) - ok
                if advance:
                    advance(len(part))
            return _timed(f"{variant}/{window}", start, confirmed, failed)
        finally:
            await sub.unsubscribe()

    async def raw_sender(self) -> Callable[[OutgoingMessage], Awaitable[None]]:
        js = (await self._client()).jetstream(timeout=10)

        async def send(m: OutgoingMessage) -> None:
            await js.publish(self.subject(m.topic, m.partition), m.payload, headers=self.native_headers(m))

        return send

    async def raw_consumer(self, topic: str, on_receive: Callable[[str], None]) -> Callable[[], Awaitable[None]]:
        from tidings.brokers.nats import subject_token

        js = (await self._client()).jetstream(timeout=10)

        async def on_message(msg: Any) -> None:
            on_receive(msg.headers["Nats-Msg-Id"])
            await msg.ack()  # a plain publish: no round trip

        # A push consumer: the server sends each message as soon as it is stored (the lowest latency it offers).
        sub = await js.subscribe(f"{self.prefix}.{subject_token(topic)}.*", cb=on_message, manual_ack=True, stream=self.stream)
        return sub.unsubscribe  # type: ignore[no-any-return]

    async def stored(self, topic: str) -> int | None:
        from tidings.brokers.nats import subject_token

        nc = await self._client()
        info = await nc.jetstream().stream_info(self.stream, subjects_filter=f"{self.prefix}.>")
        prefix = f"{self.prefix}.{subject_token(topic)}."
        return sum(n for subject, n in (info.state.subjects or {}).items() if subject.startswith(prefix))

    async def drop_topic(self, topic: str) -> None:
        nc = await self._client()
        from tidings.brokers.nats import subject_token

        await nc.jetstream().purge_stream(self.stream, subject=f"{self.prefix}.{subject_token(topic)}.>")

    async def close(self) -> None:
        await super().close()
        try:
            nc = await self._client()
            await nc.jetstream().delete_stream(self.stream)
        except Exception as exc:
            print(f"bench: deleting NATS stream {self.stream}: {exc!r}", file=sys.stderr)
        if self._nc is not None:
            await self._nc.close()


# Redis -----------------------------------------------------------------------------------------


class RedisTarget(Target):
    """Redis Streams: the adapter's default layout (`tidings:<topic>:<partition>`), topics of this run; raw is a redis-py pipeline."""

    def __init__(self, run: str, fresh: FreshStore, url: str = DEFAULT_URLS["redis"]) -> None:
        super().__init__("redis", run, url, fresh)
        self._client: Any = None
        self._topics: set[str] = set()

    def redis(self) -> Any:
        """The raw client."""
        import redis.asyncio as aioredis

        if self._client is None:
            self._client = aioredis.Redis.from_url(self.url)
        return self._client

    def stream(self, topic: str, partition: int) -> str:
        """The adapter's stream for `topic`/`partition`."""
        self._topics.add(topic)
        return f"tidings:{topic}:{partition}"

    async def prepare_topic(self, topic: str) -> None:
        self._topics.add(topic)

    async def raw_publish(
        self, messages: Sequence[OutgoingMessage], variant: str, window: int, advance: Callable[[int], None] | None = None
    ) -> RawResult:
        client = self.redis()
        # The same fields the adapter writes, headers as one JSON object.
        prepared = [(self.stream(m.topic, m.partition), self._fields(m)) for m in messages]
        confirmed = failed = 0
        start = time.perf_counter()
        for i in range(0, len(prepared), window):
            part = prepared[i : i + window]
            async with client.pipeline(transaction=False) as pipe:
                for stream, fields in part:
                    pipe.xadd(stream, fields)
                replies = await pipe.execute(raise_on_error=False)
            ok = sum(1 for r in replies if not isinstance(r, BaseException))
            confirmed, failed = confirmed + ok, failed + len(part) - ok
            if advance:
                advance(len(part))
        return _timed(f"{variant}/{window}", start, confirmed, failed)

    def _fields(self, m: OutgoingMessage) -> dict[str, Any]:
        return {
            "event_id": m.event_id,
            "key": m.key,
            "partition": m.partition,
            "headers": json.dumps(dict(m.headers), ensure_ascii=False),
            "payload": m.payload,
        }

    async def raw_sender(self) -> Callable[[OutgoingMessage], Awaitable[None]]:
        client = self.redis()

        async def send(m: OutgoingMessage) -> None:
            await client.xadd(self.stream(m.topic, m.partition), self._fields(m))

        return send

    async def raw_consumer(self, topic: str, on_receive: Callable[[str], None]) -> Callable[[], Awaitable[None]]:
        import redis.asyncio as aioredis

        streams = [self.stream(topic, p) for p in range(DEFAULT_PARTITIONS)]
        group = f"bench-raw-{self.run}"
        client = self.redis()
        async with client.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xgroup_create(stream, group, id="$", mkstream=True)
            await pipe.execute()
        # The blocking read gets a connection of its own, as the adapter's reader does.
        reader = aioredis.Redis.from_url(self.url, single_connection_client=True)
        stopping = asyncio.Event()

        async def read() -> None:
            while not stopping.is_set():
                replies = await reader.xreadgroup(group, "raw", dict.fromkeys(streams, ">"), count=100, block=200)
                for stream, entries in replies or []:
                    for _, fields in entries:
                        on_receive(fields[b"event_id"].decode())
                    await client.xack(stream, group, *(entry_id for entry_id, _ in entries))

        task = asyncio.get_running_loop().create_task(read())

        async def stop() -> None:
            stopping.set()
            await task
            await reader.aclose()

        return stop

    async def stored(self, topic: str) -> int | None:
        client = self.redis()
        async with client.pipeline(transaction=False) as pipe:
            for p in range(DEFAULT_PARTITIONS):
                pipe.xlen(self.stream(topic, p))
            return int(sum(await pipe.execute()))

    async def drop_topic(self, topic: str) -> None:
        await self.redis().delete(*(self.stream(topic, p) for p in range(DEFAULT_PARTITIONS)))

    async def close(self) -> None:
        await super().close()
        client = self.redis()
        for topic in self._topics:
            await client.delete(*(self.stream(topic, p) for p in range(DEFAULT_PARTITIONS)))
        await client.aclose()


# RabbitMQ --------------------------------------------------------------------------------------


class RabbitTarget(Target):
    """RabbitMQ: an exchange of this run and one quorum queue bound to each topic (as a subscribed group would be); raw is aio-pika."""

    def __init__(self, run: str, fresh: FreshStore, server: str = DEFAULT_URLS["rabbitmq"]) -> None:
        self.exchange_name = f"bench-{run}"
        super().__init__("rabbitmq", run, f"{server}?exchange={self.exchange_name}", fresh)
        self.server = server
        self._connection: Any = None
        self._channel: Any = None
        self._queues: dict[str, Any] = {}

    async def _open(self) -> Any:
        import aio_pika

        if self._connection is None:
            if not self._adapters:
                await self.adapter()  # the adapter declares the exchange (with its own arguments)
            self._connection = await aio_pika.connect(self.server)
            self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        return self._channel

    def _mandatory(self) -> bool:
        """Whether the adapter publishes `mandatory` (its `unroutable="reject"` mode); raw does the same."""
        return getattr(self._adapters[0], "unroutable", "reject") == "reject"

    async def prepare_topic(self, topic: str) -> None:
        # Without a bound queue RabbitMQ routes the messages nowhere (or to the adapter's holding
        # queue): a quorum queue like a consumer group's makes both contenders store every message.
        channel = await self._open()
        queue = await channel.declare_queue(
            f"{self.exchange_name}.{topic}", durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.bind(self.exchange_name, routing_key=f"{topic}.*")
        self._queues[topic] = queue

    async def raw_publish(
        self, messages: Sequence[OutgoingMessage], variant: str, window: int, advance: Callable[[int], None] | None = None
    ) -> RawResult:
        import aio_pika

        channel = await self._open()
        exchange = await channel.get_exchange(self.exchange_name)
        mandatory = self._mandatory()
        prepared = [
            (
                f"{m.topic}.{m.partition}",
                {**m.headers, "x-tidings-topic": m.topic, "x-tidings-key": m.key, "x-tidings-partition": str(m.partition)},
                m,
            )
            for m in messages
        ]
        confirmed = failed = 0
        start = time.perf_counter()
        for i in range(0, len(prepared), window):
            part = prepared[i : i + window]
            tasks = [
                asyncio.ensure_future(
                    exchange.publish(
                        aio_pika.Message(
                            m.payload, headers=headers, message_id=m.event_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                        ),
                        routing_key=key,
                        mandatory=mandatory,
                    )
                )
                for key, headers, m in part
            ]
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            ok = sum(1 for o in outcomes if not isinstance(o, BaseException))
            confirmed, failed = confirmed + ok, failed + len(part) - ok
            if advance:
                advance(len(part))
        return _timed(f"{variant}/{window}", start, confirmed, failed)

    async def stored(self, topic: str) -> int | None:
        channel = await self._open()
        queue = await channel.declare_queue(f"{self.exchange_name}.{topic}", passive=True)
        return int(queue.declaration_result.message_count)

    async def drop_topic(self, topic: str) -> None:
        queue = self._queues.get(topic)
        if queue is not None:
            await queue.purge()

    async def close(self) -> None:
        await super().close()
        try:
            channel = await self._open()
            for queue in self._queues.values():
                await queue.delete(if_unused=False, if_empty=False)
            await channel.exchange_delete(self.exchange_name)
            # The adapter's holding place for unroutable messages (its default unroutable="keep"), if it made one.
            unrouted = f"{self.exchange_name}.unrouted"
            await channel.queue_delete(unrouted)
            await channel.exchange_delete(unrouted)
        except Exception as exc:
            print(f"bench: removing RabbitMQ exchange {self.exchange_name}: {exc!r}", file=sys.stderr)
        if self._connection is not None:
            await self._connection.close()


# Kafka -----------------------------------------------------------------------------------------


class KafkaTarget(Target):
    """A private Kafka-compatible test server (tests/brokers/server_kafka.py: noida-db) with topics of this run; raw is aiokafka."""

    def __init__(self, run: str, fresh: FreshStore, server: Any, directory: str) -> None:
        super().__init__("kafka", run, server.url, fresh)
        self.server = server
        self.directory = directory
        self.bootstrap = server.url.removeprefix("kafka://")
        self._producer: Any = None

    async def _ready(self) -> Any:
        from aiokafka import AIOKafkaProducer

        from tidings.brokers.kafka import DEFAULT_MAX_REQUEST_SIZE

        if self._producer is None:
            # The adapter's own producer settings, so raw differs only in skipping the adapter.
            self._producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                client_id="tidings-bench-raw",
                enable_idempotence=True,
                acks="all",
                max_request_size=DEFAULT_MAX_REQUEST_SIZE,
                linger_ms=0,
            )
            await self._producer.start()
        return self._producer

    async def prepare_topic(self, topic: str) -> None:
        # Created by the adapter with its partition count, so raw uses the same partitions.
        from tidings.brokers.kafka import KafkaBroker, kafka_topic

        broker = self._adapters[0] if self._adapters else await self.adapter()
        assert isinstance(broker, KafkaBroker)
        await broker._ensure_topics([kafka_topic(topic)], asyncio.get_running_loop().time() + 10)

    async def raw_publish(
        self, messages: Sequence[OutgoingMessage], variant: str, window: int, advance: Callable[[int], None] | None = None
    ) -> RawResult:
        from tidings.brokers.kafka import kafka_topic

        producer = await self._ready()
        names = {m.topic: kafka_topic(m.topic) for m in messages}
        counts = {name: len(await producer.partitions_for(name)) for name in set(names.values())}
        prepared = [
            (
                names[m.topic],
                m.payload,
                m.key.encode(),
                m.partition % counts[names[m.topic]],
                [(k, v.encode()) for k, v in m.headers.items()]
                + [("tidings-topic", m.topic.encode()), ("tidings-key", m.key.encode()), ("tidings-partition", str(m.partition).encode())],
            )
            for m in messages
        ]
        confirmed = failed = 0
        start = time.perf_counter()
        for i in range(0, len(prepared), window):
            part = prepared[i : i + window]
            futures = [await producer.send(t, p, key=k, partition=n, headers=h) for t, p, k, n, h in part]
            outcomes = await asyncio.gather(*futures, return_exceptions=True)
            ok = sum(1 for o in outcomes if not isinstance(o, BaseException))
            confirmed, failed = confirmed + ok, failed + len(part) - ok
            if advance:
                advance(len(part))
        return _timed(f"{variant}/{window}", start, confirmed, failed)

    async def stored(self, topic: str) -> int | None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from tidings.brokers.kafka import kafka_topic

        name = kafka_topic(topic)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, client_id="tidings-bench-count")
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic(name) or set()
            if not partitions:
                await consumer.topics()
                partitions = consumer.partitions_for_topic(name) or set()
            ends = await consumer.end_offsets([TopicPartition(name, p) for p in partitions])
            return int(sum(ends.values()))
        finally:
            await consumer.stop()

    async def drop_topic(self, topic: str) -> None:
        # noida-db rewrites its whole state file after changes: dropping finished topics keeps that cheap.
        from aiokafka.admin import AIOKafkaAdminClient

        from tidings.brokers.kafka import kafka_topic

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([kafka_topic(topic)])
        except Exception as exc:
            print(f"bench: deleting Kafka topic {topic}: {exc!r}", file=sys.stderr)
        finally:
            await admin.close()

    async def close(self) -> None:
        await super().close()
        if self._producer is not None:
            await self._producer.stop()
        await self.server.close()
        shutil.rmtree(self.directory, ignore_errors=True)


async def _start_kafka() -> tuple[Any, str]:
    """Start the private Kafka-compatible server the broker tests use (tests/brokers/server_kafka.py)."""
    brokers_dir = _REPO / "tests" / "brokers"
    if not (brokers_dir / "server_kafka.py").exists() or not (_REPO / "src" / "tidings" / "brokers" / "kafka.py").exists():
        raise SystemExit("kafka is not available: tests/brokers/server_kafka.py or src/tidings/brokers/kafka.py is missing")
    # The server module imports tests/support.py, as it does under pytest.
    for folder in (brokers_dir, brokers_dir.parent):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    import server_kafka  # type: ignore[import-not-found]

    directory = tempfile.mkdtemp(prefix="tidings-bench-kafka-")
    try:
        server = await server_kafka.start(Path(directory))
    except BaseException as exc:  # pytest.skip raises an Exception subclass outside pytest's control
        shutil.rmtree(directory, ignore_errors=True)
        raise SystemExit(f"kafka is not available: {exc}") from None
    return server, directory


# local -----------------------------------------------------------------------------------------


class LocalTarget(Target):
    """The local broker: the log table in the same store; raw is direct SQL into tidings_local_log."""

    def __init__(self, run: str, fresh: FreshStore) -> None:
        super().__init__("local", run, "local:", fresh)
        self._conn: Any = None

    def variants(self, windows: Sequence[int]) -> list[tuple[str, int]]:
        # executemany in one transaction is what the adapter does; one INSERT … SELECT unnest(…) per batch is the SQL floor.
        return [(v, w) for v in ("executemany", "unnest") for w in windows]

    async def raw_publish(
        self, messages: Sequence[OutgoingMessage], variant: str, window: int, advance: Callable[[int], None] | None = None
    ) -> RawResult:
        if self._conn is None:
            self._conn = await self.fresh.connect()
        conn = self._conn
        prepared = [(m.topic, m.partition, m.key, m.event_id, json.dumps(dict(m.headers)), m.payload) for m in messages]
        start = time.perf_counter()
        for i in range(0, len(prepared), window):
            part = prepared[i : i + window]
            if variant == "executemany":
                async with conn.transaction(), conn.cursor() as cur:
                    await cur.executemany(
                        "INSERT INTO tidings_local_log (topic, partition, key, event_id, headers, payload) "
                        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (event_id, replay) DO NOTHING",
                        part,
                    )
            else:
                columns = list(zip(*part, strict=True))
                await conn.execute(
                    "INSERT INTO tidings_local_log (topic, partition, key, event_id, headers, payload) "
                    "SELECT * FROM unnest(%s::text[], %s::int[], %s::text[], %s::text[], %s::text[], %s::bytea[]) "
                    "ON CONFLICT (event_id, replay) DO NOTHING",
                    [list(c) for c in columns],
                )
            if advance:
                advance(len(part))
        return _timed(f"{variant}/{window}", start, len(prepared), 0)

    async def stored(self, topic: str) -> int | None:
        return int(await self.fresh.scalar("SELECT count(*) FROM tidings_local_log WHERE topic = ?", (topic,)))

    async def drop_topic(self, topic: str) -> None:
        await self.fresh.store.run("DELETE FROM tidings_local_log WHERE topic = ?", (topic,))
        await self.fresh.store.run("VACUUM tidings_local_log")

    async def close(self) -> None:
        await super().close()
        if self._conn is not None:
            await self._conn.close()


async def open_target(name: str, run: str, fresh: FreshStore) -> Target:
    """Set up broker `name` for run `run` (Kafka: start a private server)."""
    if name == "nats":
        return NatsTarget(run, fresh)
    if name == "redis":
        return RedisTarget(run, fresh)
    if name == "rabbitmq":
        return RabbitTarget(run, fresh)
    if name == "kafka":
        server, directory = await _start_kafka()
        return KafkaTarget(run, fresh, server, directory)
    if name == "local":
        return LocalTarget(run, fresh)
    raise SystemExit(f"unknown broker {name!r}; choose one of {', '.join(BROKERS)}")


# --- relay processes --------------------------------------------------------------------------


def spawn_relay(
    fresh: FreshStore, broker_url: str, batch_size: int, log: Path, *, profile: str | None = None
) -> subprocess.Popen[bytes]:
    """A relay in a process of its own, started as an operator would (`python -m tidings.cli relay`); optionally under cProfile."""
    env = {
        **os.environ,
        "TIDINGS_DATABASE_URL": fresh.process_url,
        "TIDINGS_BROKER_URL": broker_url,
        "COLUMNS": "200",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(_REPO / "src"), os.environ.get("PYTHONPATH")])),
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, *(["-m", "cProfile", "-o", profile] if profile else []),
             "-m", "tidings.cli", "relay", "--batch-size", str(batch_size)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


async def wait_for_relays(
    fresh: FreshStore, processes: Sequence[subprocess.Popen[bytes]], logs: Sequence[Path], *, timeout: float = 30.0
) -> float:
    """Wait until `processes` relays together own every partition in fair shares; returns the seconds it took."""
    started = time.perf_counter()
    share = -(-DEFAULT_PARTITIONS // len(processes))
    while True:
        for process, log in zip(processes, logs, strict=True):
            if process.poll() is not None:
                raise RuntimeError(f"relay process {process.pid} exited with {process.returncode}: {_tail(log)}")
        rows = await fresh.store.fetch("SELECT partitions FROM tidings_relays")
        owned = [set(filter(None, parts.split(","))) for (parts,) in rows]
        if len(owned) == len(processes) and len(set().union(*owned)) == DEFAULT_PARTITIONS and max(map(len, owned)) <= share:
            return time.perf_counter() - started
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"relays did not share the partitions within {timeout} s: {owned}; {_tail(logs[0])}")
        await asyncio.sleep(0.1)


def stop_relays(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each relay we started (they release their partitions), SIGKILL any that does not stop within 10 s."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-1500:]
    except OSError:
        return "(no log)"


# --- statistics -------------------------------------------------------------------------------


def percentiles(values: Sequence[float], points: Sequence[float] = (50, 99)) -> dict[str, float]:
    """Nearest-rank percentiles of `values` (seconds) in milliseconds, plus max."""
    if not values:
        return {**{f"p{p:g}_ms": float("nan") for p in points}, "max_ms": float("nan")}
    ordered = sorted(values)
    out = {}
    for p in points:
        rank = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
        out[f"p{p:g}_ms"] = round(ordered[rank] * 1000, 3)
    out["max_ms"] = round(ordered[-1] * 1000, 3)
    return out


def cpu_count() -> int | None:
    """Cores available to this process."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()
