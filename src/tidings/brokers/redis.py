"""The Redis Streams broker (``redis://``, ``rediss://``): one stream per topic partition, read by consumer groups.

Layout. A message of ``topic`` and ``partition`` is one entry of the stream ``{prefix}:{topic}:{partition}``
with the fields ``event_id``, ``key``, ``partition``, ``headers`` (one JSON object) and ``payload``.
Subscribers read the streams of partitions ``0 … partitions-1`` of their topics, so publisher and
subscriber must agree on ``partitions`` (default: the relay's own DEFAULT_PARTITIONS); a message for a
partition outside that range is refused rather than written where nobody reads.

Publishing. A batch is one pipeline (no MULTI) of XADDs, sent at once and answered per entry. An
XADD reply means the entry is in the server's memory; it survives a restart only as far as the
server persists it (``appendonly yes`` with ``appendfsync always`` for "confirmed means on disk"), and
survives a fail-over only with ``replicas=N``, which adds ``WAIT N`` to the pipeline. Nothing is trimmed
unless ``maxlen`` is set, because trimming drops entries that a slow group may not have read yet.
Redis has no de-duplication we can use here (XADD IDMP needs Redis 8.6), so a retried batch can
append twice; consumers de-duplicate by ``event_id`` in their inbox, as they must for every broker.

Consuming. ``subscribe(topics, group)`` creates the group on each stream at id ``0`` (so a late group
sees everything still in the stream) and reads as a consumer of its own name with XREADGROUP.
An entry stays in the group's pending list until XACK. A member *leases* what it holds: every
``claim_idle / 3`` seconds it re-claims its held entries with ``XCLAIM … JUSTID`` (which resets their
idle time without counting a delivery), so a slow handler keeps its messages, and a dead member's
entries go idle. Every member sweeps the group with XAUTOCLAIM for entries idle longer than
``claim_idle`` and delivers them before new ones: that is how a crashed member's messages reach the
next one. ``nack(delay)`` keeps the entry pending (and leased) under the member; after the delay
the member XCLAIMs it back, which counts a delivery, and queues it again. ``Delivery.attempt`` is
Redis' own delivery counter. ``close()`` hands back everything the member has not settled (XCLAIM
with a large IDLE): what was read ahead, what waits after a nack, and what was handed out but not
acked (the consumer drops what it had not started on when it gives a shard back), so the next
member takes it at once.

Takeover. A member that joins while other consumers hold entries of a stream *fences* that stream:
it reads no new entries there, and what its sweeps claim there is held (leased) but not handed
on, until either no other consumer holds anything of the stream any more, or ``claim_idle`` has
passed since it joined (everything a member that had left or died held is claimable by then; what
is still held elsewhere belongs to a live member, whose order is its own). Then it hands on what
it collected sorted by entry id, and reads on. The fence is needed because the entries of a
previous member become claimable at different moments: released ones at once, the rest only when
their lease runs out, and a member killed half-way through ``close()`` leaves both kinds. Handing
on each sweep's catch as it came gave a key's newer messages before its older ones.

One member per group keeps strict order per key; with several members, entries of one partition
stream are spread over them (Redis has no partition assignment), so order per key then holds
only per member.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from tidings.brokers.base import BrokerConfigurationError, BrokerUnavailable, Delivery, MessageRejected, OutgoingMessage
from tidings.messaging.partitioning import DEFAULT_PARTITIONS
from tidings.messaging.redaction import redact_url, scrub

__all__ = ["RedisBroker", "RedisSubscription", "from_url"]

log = logging.getLogger("tidings.brokers.redis")

#: Redis takes values up to 512 MiB, but every consumer holds a whole entry in memory: stay far below.
DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
DEFAULT_PREFIX = "tidings"

# Released entries get this idle time (ms) so the next member's XAUTOCLAIM takes them at once.
_RELEASED_IDLE_MS = 10**9
# Redis errors that say "this cannot work until someone changes the data", not "try again later".
_PERMANENT_ERRORS = ("WRONGTYPE",)
_TRANSIENT = (RedisError, OSError, TimeoutError)


def from_url(url: str, **options: Any) -> RedisBroker:
    """A Redis Streams broker for ``redis://[:password@]host[:port][/db]`` (see RedisBroker for options)."""
    try:
        return RedisBroker(url, **options)
    except ValueError as exc:  # a malformed URL (redis-py) or option (ours)
        raise BrokerConfigurationError(f"cannot use the Redis URL {redact_url(url)!r}: {scrub(str(exc), url)}") from None


class RedisBroker:
    """A Broker over Redis Streams; ``claim_idle`` is how long a silent member's messages stay its own."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,  # first part of every stream key
        partitions: int = DEFAULT_PARTITIONS,  # must match the relay's: subscribers read 0..partitions-1
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        maxlen: int | None = None,  # XADD MAXLEN ~ n; None keeps everything (no silent loss)
        replicas: int = 0,  # WAIT for this many replicas before a publish counts as confirmed
        claim_idle: float = 5.0,  # seconds an entry must be unrenewed before another member takes it
        block: float = 1.0,  # longest XREADGROUP wait, in seconds
        prefetch: int = 100,  # entries read ahead of the consumer
        timeout: float = 5.0,  # bound on connecting and on every command, in seconds
        consumer_name: str | None = None,  # a stable name (one live process each!) to resume its own pending entries
    ) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, not {partitions}")
        if claim_idle <= 0 or block <= 0 or timeout <= 0:
            raise ValueError("claim_idle, block and timeout must be positive numbers of seconds")
        self.url = url
        self.prefix = prefix
        self.partitions = partitions
        self.max_message_bytes = max_message_bytes
        self.maxlen = maxlen
        self.replicas = replicas
        self.claim_idle = claim_idle
        self.block = block
        self.prefetch = max(1, prefetch)
        self.timeout = timeout
        self.consumer_name = consumer_name
        self._where = redact_url(url)
        # No automatic command retries: a retried pipeline could append twice, and a retried
        # XREADGROUP could hide entries whose first reply was lost. Callers retry (the relay with
        # backoff, the reader loop after re-reading its pending list); the pool still replaces a
        # connection the server closed before handing it out, so a restarted server is used at once.
        self._client = self._new_client()
        self._subscriptions: set[RedisSubscription] = set()

    def _new_client(self, **options: Any) -> aioredis.Redis:
        return aioredis.Redis.from_url(
            self.url,
            socket_connect_timeout=self.timeout,
            socket_timeout=self.timeout + self.block,  # a blocking XREADGROUP legitimately waits ``block`` first
            retry=Retry(NoBackoff(), 0),
            health_check_interval=30,
            **options,
        )

    def stream(self, topic: str, partition: int) -> str:
        """The stream that holds ``topic``'s messages of ``partition``."""
        return f"{self.prefix}:{topic}:{partition}"

    async def connect(self) -> None:
        """Check that the server answers (BrokerUnavailable if not); streams and groups are made on use."""
        try:
            async with asyncio.timeout(self.timeout):
                await self._client.ping()
        except _TRANSIENT as exc:
            raise BrokerUnavailable(f"Redis at {self._where} is unreachable: {_why(exc)}") from exc
        await self._warn_if_volatile()

    async def _warn_if_volatile(self) -> None:
        """Say once if confirmed messages would not survive a restart of this server."""
        try:
            async with asyncio.timeout(self.timeout):
                config = await self._client.config_get("appendonly")
        except _TRANSIENT:
            return  # CONFIG is often disabled on managed Redis; nothing to learn then
        if config.get(b"appendonly", config.get("appendonly")) in (b"no", "no"):
            log.warning(
                "Redis at %s runs without appendonly: messages it confirms are lost if it restarts; "
                "use appendonly yes (appendfsync always for no loss at all)",
                self._where,
            )

    async def publish(self, messages: Sequence[OutgoingMessage]) -> list[BaseException | None]:
        """Append every message in one pipeline; one result per message, never raises for one of them."""
        results: list[BaseException | None] = [None] * len(messages)
        sent: list[int] = []
        async with self._client.pipeline(transaction=False) as pipe:
            for index, message in enumerate(messages):
                refusal = self._refusal(message)
                if refusal is not None:
                    results[index] = MessageRejected(refusal)
                    continue
                fields: dict[str | bytes, bytes | str | int] = {
                    "event_id": message.event_id,
                    "key": message.key,
                    "partition": message.partition,
                    "headers": json.dumps(dict(message.headers), ensure_ascii=False),
                    "payload": message.payload,
                }
                pipe.xadd(self.stream(message.topic, message.partition), fields, maxlen=self.maxlen, approximate=True)
                sent.append(index)
            if not sent:
                return results
            if self.replicas:
                # Half the deadline, so a missing replica is reported as such, not as a timeout.
                pipe.wait(self.replicas, max(1, int(self.timeout * 500)))
            try:
                # One bound for the whole batch: the relay must get its answer even if the server hangs.
                async with asyncio.timeout(self.timeout):
                    replies = await pipe.execute(raise_on_error=False)
            except _TRANSIENT as exc:
                # Some XADDs may have been applied before the connection broke: a retry can append
                # them twice, which the consumers' inbox absorbs (at-least-once).
                for index in sent:
                    results[index] = BrokerUnavailable(f"Redis at {self._where} did not confirm: {_why(exc)}")
                return results
        for index, reply in zip(sent, replies, strict=False):
            if isinstance(reply, ResponseError) and str(reply).startswith(_PERMANENT_ERRORS):
                results[index] = MessageRejected(f"Redis refused {messages[index].event_id}: {reply}")
            elif isinstance(reply, BaseException):
                results[index] = BrokerUnavailable(f"Redis did not append {messages[index].event_id}: {reply}")
        if self.replicas:
            acknowledged = replies[-1]
            if isinstance(acknowledged, BaseException) or int(acknowledged) < self.replicas:
                # Appended on the primary but not yet on enough replicas: a fail-over now could lose it.
                shortfall = (
                    f"WAIT failed: {_why(acknowledged)}"
                    if isinstance(acknowledged, BaseException)
                    else f"only {acknowledged} of {self.replicas} replicas had it within {self.timeout / 2} s"
                )
                for index in sent:
                    if results[index] is None:
                        results[index] = BrokerUnavailable(f"Redis at {self._where}: {shortfall}")
        return results

    def _refusal(self, message: OutgoingMessage) -> str | None:
        """Why ``message`` can never be published here, or None."""
        if len(message.payload) > self.max_message_bytes:
            return (
                f"{message.topic} message {message.event_id} is {len(message.payload)} bytes, over this Redis "
                f"broker's limit of {self.max_message_bytes} (max_message_bytes=)"
            )
        if not 0 <= message.partition < self.partitions:
            return (
                f"{message.topic} message {message.event_id} is for partition {message.partition}, but subscribers "
                f"read partitions 0..{self.partitions - 1}: give the broker the relay's partition count (partitions=)"
            )
        return None

    async def subscribe(self, topics: Sequence[str], group: str) -> RedisSubscription:
        """Join ``group`` on every partition stream of ``topics`` as a consumer of a name of its own."""
        if not topics:
            raise ValueError("subscribe() needs at least one topic")
        subscription = RedisSubscription(self, list(topics), group)
        await subscription.start()
        self._subscriptions.add(subscription)
        return subscription

    async def close(self) -> None:
        """Leave every subscription (releasing what they had not handed out), then close the connections."""
        await asyncio.gather(*(s.close() for s in list(self._subscriptions)), return_exceptions=True)
        self._subscriptions.clear()
        await self._client.aclose()


class _Closed:
    """Queue marker: the subscription was closed."""


_CLOSED = _Closed()
_EntryRef = tuple[str, bytes]  # (stream, entry id)


class RedisSubscription:
    """One member of a consumer group: a reader task fills a local queue, a lease task keeps what it holds."""

    def __init__(self, broker: RedisBroker, topics: list[str], group: str) -> None:
        self.broker = broker
        self.topics = topics
        self.group = group
        self.consumer = broker.consumer_name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._client = broker._client
        # The blocking XREADGROUP has a connection of its own, so close() can interrupt it with
        # CLIENT UNBLOCK (it then returns as if it timed out, nothing read) instead of waiting.
        self._reader_client = broker._new_client(single_connection_client=True)
        self._reader_id: int | None = None
        self._streams: dict[str, tuple[str, int]] = {
            broker.stream(topic, partition): (topic, partition) for topic in topics for partition in range(broker.partitions)
        }
        # Everything this member owns and has not acked: queued, handed out, or waiting after a nack.
        # The lease task renews exactly these; what is not here goes idle and is reclaimed.
        self._held: dict[_EntryRef, Delivery] = {}
        self._queued: set[_EntryRef] = set()
        self._waiting: dict[_EntryRef, asyncio.Task[None]] = {}  # nacked, until their delay is over
        self._queue: asyncio.Queue[Delivery | _Closed] = asyncio.Queue()
        self._room = asyncio.Event()
        # Streams where other consumers held entries when we joined ("Takeover" above): no new
        # entries are read there, and what is claimed there waits in _fenced (held, leased, not
        # queued) until the fence lifts and it is queued in entry id order.
        self._held_back: set[str] = set()
        self._fenced: dict[str, dict[bytes, Delivery]] = {}
        # Acks asked for and not yet sent, by stream; sent together by one task (see _send_acks).
        self._to_ack: dict[str, list[tuple[bytes, asyncio.Future[None]]]] = {}
        self._acker: asyncio.Task[None] | None = None
        self._joined_at = 0.0
        self._recover = True
        self._closed = False
        self._failure: BaseException | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._per_stream = max(10, math.ceil(broker.prefetch / len(self._streams)))

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the group on every stream and find streams that still hold another member's entries."""
        try:
            async with asyncio.timeout(self.broker.timeout):
                await self._create_groups()
                async with self._client.pipeline(transaction=False) as pipe:
                    for stream in self._streams:
                        pipe.xpending(stream, self.group)
                    summaries = await pipe.execute()
        except _TRANSIENT as exc:
            await self._reader_client.aclose()
            raise BrokerUnavailable(f"cannot join group {self.group!r} on Redis at {self.broker._where}: {_why(exc)}") from exc
        self._joined_at = time.monotonic()
        self._held_back = {
            stream
            for stream, summary in zip(self._streams, summaries, strict=True)
            if any(c["name"] != self.consumer.encode() for c in summary["consumers"])
        }
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read_loop()), loop.create_task(self._lease_loop())]

    async def _create_groups(self) -> None:
        # Id 0, not $: a group created after its first messages still gets them (and MKSTREAM lets
        # a group exist before its stream's first message).
        async with self._client.pipeline(transaction=False) as pipe:
            for stream in self._streams:
                pipe.xgroup_create(stream, self.group, id="0", mkstream=True)
            replies = await pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, BaseException) and not str(reply).startswith("BUSYGROUP"):
                raise reply

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self._deliveries()

    async def _deliveries(self) -> AsyncIterator[Delivery]:
        # The queue lives on the subscription, not in this generator: a caller that stops iterating
        # and starts again (a new ``async for``) loses nothing that was read.
        while not self._closed:
            item = await self._queue.get()
            if isinstance(item, _Closed):
                self._queue.put_nowait(item)  # wake any other iterator too
                break
            ref = _ref(item)
            self._queued.discard(ref)
            if self._queue.qsize() < self.broker.prefetch:
                self._room.set()
            yield item
        if self._failure is not None:
            raise self._failure

    async def close(self) -> None:
        """Stop reading and release what was read but not handed out, so the next member gets it at once."""
        if self._closed:
            return
        self._closed = True
        self._queue.put_nowait(_CLOSED)
        self._room.set()
        self.broker._subscriptions.discard(self)
        reader, lease = self._tasks or (None, None)
        for task in [lease, *self._waiting.values()]:
            if task is not None:
                task.cancel()
        clean = True
        if reader is not None:
            if self._reader_id is not None:
                try:
                    async with asyncio.timeout(self.broker.timeout):
                        await self._client.client_unblock(self._reader_id)
                except _TRANSIENT:
                    pass  # then the read ends by its own BLOCK timeout
            # Let the reader finish its current XREADGROUP (at most ``block``) instead of cancelling
            # it: a cancelled read can leave entries in our pending list that nobody queued.
            done, _ = await asyncio.wait({reader}, timeout=self.broker.block + self.broker.timeout)
            if not done:
                clean = False
                reader.cancel()
        await asyncio.gather(*(t for t in self._tasks if t is not None), *self._waiting.values(), return_exceptions=True)
        try:
            async with asyncio.timeout(self.broker.timeout):
                # Everything not settled, in entry order: the next member may take each part the moment it is released.
                await self._release(sorted(self._held, key=_entry_order))
                if clean:
                    await self._forget_consumer()
        except _TRANSIENT as exc:
            # Not fatal: what we held goes idle and is reclaimed after claim_idle.
            log.warning("group %s consumer %s left without releasing its entries: %s", self.group, self.consumer, _why(exc))
        await self._reader_client.aclose()

    async def _release(self, refs: list[_EntryRef]) -> None:
        """Make entries we will not settle claimable now, with the delivery count the next member should see."""
        if not refs:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for stream, entry_id in refs:
                delivery = self._held.get((stream, entry_id))
                if delivery is None:
                    continue  # acked while it waited
                # Queued and fenced entries were never handed out (their next claim is this attempt
                # again); handed-out and nacked ones were (their next claim is the following attempt).
                unseen = (stream, entry_id) in self._queued or entry_id in self._fenced.get(stream, {})
                count = delivery.attempt - 1 if unseen else delivery.attempt
                pipe.xclaim(
                    stream, self.group, self.consumer, 0, [entry_id], idle=_RELEASED_IDLE_MS, retrycount=count, justid=True
                )
            await pipe.execute(raise_on_error=False)
        for ref in refs:
            self._held.pop(ref, None)

    async def _forget_consumer(self) -> None:
        """Remove our consumer from streams where it owns nothing, so groups do not collect dead names."""
        async with self._client.pipeline(transaction=False) as pipe:
            for stream in self._streams:
                pipe.xpending_range(stream, self.group, "-", "+", 1, consumername=self.consumer)
            pending = await pipe.execute(raise_on_error=False)
        async with self._client.pipeline(transaction=False) as pipe:
            # DELCONSUMER drops the consumer's pending entries for good, so only where it has none;
            # our reader has stopped, so nothing can be added to it in between.
            for stream, mine in zip(self._streams, pending, strict=True):
                if isinstance(mine, list) and not mine:
                    pipe.xgroup_delconsumer(stream, self.group, self.consumer)
            await pipe.execute(raise_on_error=False)

    # -- reading ----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        pause = 0.1
        next_sweep = 0.0
        sweep_every = self.broker.claim_idle / 2
        while not self._closed:
            try:
                while self._queue.qsize() >= self.broker.prefetch and not self._closed:
                    self._room.clear()
                    await self._room.wait()
                if self._closed:
                    break
                if self._recover:
                    await self._read_own_pending()
                    self._recover = False
                if time.monotonic() >= next_sweep:
                    await self._sweep()
                    next_sweep = time.monotonic() + sweep_every
                await self._read_new(max(0.01, min(self.broker.block, next_sweep - time.monotonic())))
                if pause > 0.1:
                    log.info("group %s: reading from Redis at %s again", self.group, self.broker._where)
                pause = 0.1
            except _TRANSIENT as exc:
                # Said once per outage (then at debug level), like the relay does.
                level = logging.WARNING if pause == 0.1 else logging.DEBUG
                if isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP"):
                    # The stream or group vanished (deleted, or a server restarted without persistence).
                    log.log(level, "group %s is gone from Redis at %s; creating it again", self.group, self.broker._where)
                else:
                    log.log(level, "group %s: Redis at %s failed (%s); retrying", self.group, self.broker._where, _why(exc))
                await self._pause_and_recover(pause)
                pause = min(pause * 2, 2.0)
            except Exception as exc:  # a bug: surface it to the iterator instead of dying silently
                self._failure = exc
                self._queue.put_nowait(_CLOSED)
                raise

    async def _pause_and_recover(self, pause: float) -> None:
        # A reply lost with its connection may have moved entries into our pending list that we
        # never saw: read our own pending list before anything new, so their order is kept.
        self._recover = True
        await asyncio.sleep(pause)
        try:
            await self._create_groups()
        except _TRANSIENT:
            pass

    async def _read_own_pending(self) -> None:
        """Deliver entries pending under our own name that we do not hold (a reused name, a lost reply)."""
        orphans: dict[str, list[bytes]] = defaultdict(list)
        async with self._client.pipeline(transaction=False) as pipe:
            for stream in self._streams:
                pipe.xpending_range(stream, self.group, "-", "+", len(self._held) + 1000, consumername=self.consumer)
            pendings = await pipe.execute()
        counts: dict[_EntryRef, int] = {}
        for stream, pending in zip(self._streams, pendings, strict=True):
            for row in pending:
                if (stream, row["message_id"]) not in self._held:
                    orphans[stream].append(row["message_id"])
                    counts[(stream, row["message_id"])] = row["times_delivered"]
        if not orphans:
            return
        # XCLAIM (not JUSTID) to ourselves returns the entries and counts this delivery.
        async with self._client.pipeline(transaction=False) as pipe:
            for stream, ids in orphans.items():
                pipe.xclaim(stream, self.group, self.consumer, 0, ids)
            claimed = await pipe.execute()
        for stream, entries in zip(orphans, claimed, strict=True):
            for entry_id, fields in entries:
                self._take(stream, entry_id, fields, counts[(stream, entry_id)] + 1)

    async def _sweep(self) -> None:
        """Claim other members' entries that went idle (their member died) and deliver them before new ones."""
        started = time.monotonic()
        idle_ms = int(self.broker.claim_idle * 1000)
        cursors = dict.fromkeys(self._streams, b"0-0")
        claimed: dict[str, list[tuple[bytes, dict[bytes, bytes]]]] = defaultdict(list)
        for _ in range(10):  # pages; whatever is left is found by the next sweep
            async with self._client.pipeline(transaction=False) as pipe:
                for stream, cursor in cursors.items():
                    pipe.xautoclaim(stream, self.group, self.consumer, idle_ms, cursor, count=100)
                replies = await pipe.execute()
            for stream, (cursor, entries, *_deleted) in zip(list(cursors), replies, strict=True):
                # Entries trimmed away (maxlen) while pending come back as deleted and leave the list.
                claimed[stream].extend(e for e in entries if e[1] is not None)
                if cursor in (b"0-0", "0-0"):
                    del cursors[stream]
                else:
                    cursors[stream] = cursor
            if not cursors:
                break
        fresh = {s: [e for e in es if (s, e[0]) not in self._held] for s, es in claimed.items()}
        fresh = {s: es for s, es in fresh.items() if es}
        if fresh:
            # XAUTOCLAIM counted a delivery but does not say how many there were: ask XPENDING.
            async with self._client.pipeline(transaction=False) as pipe:
                for stream, entries in fresh.items():
                    pipe.xpending_range(
                        stream, self.group, entries[0][0], entries[-1][0], len(entries) + len(self._held), consumername=self.consumer
                    )
                pendings = await pipe.execute()
            for (stream, entries), pending in zip(fresh.items(), pendings, strict=True):
                counts = {row["message_id"]: row["times_delivered"] for row in pending}
                for entry_id, fields in entries:
                    self._take(stream, entry_id, fields, counts.get(entry_id, 2))
        await self._release_held_back(started, swept_fully=set(self._streams) - set(cursors))

    async def _release_held_back(self, sweep_started: float, swept_fully: set[str]) -> None:
        """Lift the fence of streams whose earlier entries were all reclaimed or are held by a live member."""
        if not self._held_back:
            return
        if sweep_started >= self._joined_at + self.broker.claim_idle:
            # Everything a dead member held when we joined was idle long enough for this sweep to take it;
            # what is still held elsewhere belongs to a live member, whose order is its own.
            for stream in self._held_back & swept_fully:
                self._lift(stream)
            return
        streams = list(self._held_back)
        async with self._client.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xpending(stream, self.group)
            summaries = await pipe.execute()
        me = self.consumer.encode()
        for stream, summary in zip(streams, summaries, strict=True):
            if all(c["name"] == me for c in summary["consumers"]):
                self._lift(stream)

    def _lift(self, stream: str) -> None:
        """Hand on what was claimed of a fenced stream, oldest entry first, and read its new entries from now on."""
        self._held_back.discard(stream)
        fenced = self._fenced.pop(stream, {})
        for entry_id in sorted(fenced, key=_id_order):
            ref = (stream, entry_id)
            if ref in self._held:  # not released by a close() meanwhile
                self._queued.add(ref)
                self._queue.put_nowait(fenced[entry_id])

    async def _read_new(self, block: float) -> None:
        streams = {stream: ">" for stream in self._streams if stream not in self._held_back}
        if not streams:
            await asyncio.sleep(block)
            return
        if self._reader_id is None:
            self._reader_id = await self._reader_client.client_id()
        try:
            replies = await self._reader_client.xreadgroup(
                self.group, self.consumer, streams, count=self._per_stream, block=max(1, int(block * 1000))
            )
        except _TRANSIENT:
            self._reader_id = None  # the next connection has another id
            raise
        for stream, entries in replies or []:
            stream_name = stream.decode() if isinstance(stream, bytes) else stream
            for entry_id, fields in entries:
                self._enqueue(stream_name, entry_id, fields, 1)

    def _take(self, stream: str, entry_id: bytes, fields: dict[bytes, bytes], attempt: int) -> None:
        """Hold a claimed entry: queue it, or keep it back (leased) while its stream is fenced."""
        if stream in self._held_back:
            self._fenced.setdefault(stream, {})[entry_id] = self._hold(stream, entry_id, fields, attempt)
        else:
            self._enqueue(stream, entry_id, fields, attempt)

    def _enqueue(self, stream: str, entry_id: bytes, fields: dict[bytes, bytes], attempt: int) -> None:
        delivery = self._hold(stream, entry_id, fields, attempt)
        self._queued.add((stream, entry_id))
        self._queue.put_nowait(delivery)

    def _hold(self, stream: str, entry_id: bytes, fields: dict[bytes, bytes], attempt: int) -> Delivery:
        topic, partition = self._streams[stream]
        delivery = _decode(topic, partition, fields, attempt)
        delivery._settle = _Settle(self, stream, entry_id)
        self._held[(stream, entry_id)] = delivery
        return delivery

    # -- holding, acking, nacking -------------------------------------------------------------

    async def _lease_loop(self) -> None:
        """Renew our claim on what we hold, so only a member that stopped renewing loses its entries."""
        every = self.broker.claim_idle / 3
        while not self._closed:
            await asyncio.sleep(every)
            by_stream: dict[str, list[bytes]] = defaultdict(list)
            for stream, entry_id in list(self._held):
                by_stream[stream].append(entry_id)
            if not by_stream:
                continue
            try:
                async with asyncio.timeout(every):
                    async with self._client.pipeline(transaction=False) as pipe:
                        for stream, ids in by_stream.items():
                            for start in range(0, len(ids), 1000):
                                # JUSTID: resets the idle time without counting a delivery. If another
                                # member already took an entry (we stalled past claim_idle), this takes it
                                # back; both may then handle it, which the inbox de-duplicates.
                                pipe.xclaim(stream, self.group, self.consumer, 0, ids[start : start + 1000], justid=True)
                        await pipe.execute(raise_on_error=False)
            except _TRANSIENT as exc:
                log.debug("group %s: could not renew held entries: %s", self.group, _why(exc))

    async def _ack(self, stream: str, entry_id: bytes) -> None:
        # Forget it first either way: if XACK fails, the entry goes idle and comes back (to us or
        # another member) after claim_idle, and the inbox drops the duplicate.
        self._held.pop((stream, entry_id), None)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._to_ack.setdefault(stream, []).append((entry_id, done))
        if self._acker is None or self._acker.done():
            self._acker = loop.create_task(self._send_acks())
        await done

    async def _send_acks(self) -> None:
        """Send the acks asked for meanwhile as one pipeline (one XACK per stream), one pipeline at a time.

        The consumer acks a batch, and the other shards' messages it skips, all at once: one XACK
        each took a connection each, and hundreds at once ran the client's pool out (redis-py:
        100 connections), so most acks failed and came back as redeliveries. Acks asked for while
        a pipeline is on its way go in the next one.
        """
        await asyncio.sleep(0)  # the rest of this loop turn's acks join the first pipeline
        while self._to_ack:
            batch, self._to_ack = self._to_ack, {}
            errors: dict[str, BaseException] = {}
            try:
                async with asyncio.timeout(self.broker.timeout):
                    async with self._client.pipeline(transaction=False) as pipe:
                        for stream, waiting in batch.items():
                            pipe.xack(stream, self.group, *(entry_id for entry_id, _ in waiting))
                        replies = await pipe.execute(raise_on_error=False)
                errors = {s: r for s, r in zip(batch, replies, strict=True) if isinstance(r, BaseException)}
            except _TRANSIENT as exc:
                errors = dict.fromkeys(batch, exc)
            for stream, waiting in batch.items():
                error = errors.get(stream)
                for entry_id, done in waiting:
                    if done.done():
                        continue  # its caller stopped waiting
                    if error is None:
                        done.set_result(None)
                    else:
                        done.set_exception(
                            BrokerUnavailable(
                                f"could not ack {entry_id!r} of {stream} for group {self.group!r}; "
                                f"it will be delivered again: {_why(error)}"
                            )
                        )

    async def _nack(self, stream: str, entry_id: bytes, delivery: Delivery, delay: float) -> None:
        ref = (stream, entry_id)
        if ref not in self._held or ref in self._waiting or self._closed:
            return  # acked already, already waiting, or we left (then it is reclaimed after claim_idle)
        # The entry stays pending under our name (and leased) while it waits, so nobody else takes it;
        # after the delay we claim it again, which counts the delivery in Redis, and queue it.
        task = asyncio.get_running_loop().create_task(self._redeliver_later(ref, delivery, delay))
        self._waiting[ref] = task

    async def _redeliver_later(self, ref: _EntryRef, delivery: Delivery, delay: float) -> None:
        stream, entry_id = ref
        await asyncio.sleep(delay)
        pause = 0.1
        while not self._closed:
            try:
                async with asyncio.timeout(self.broker.timeout):
                    entries = await self._client.xclaim(stream, self.group, self.consumer, 0, [entry_id])
                break
            except _TRANSIENT as exc:
                log.debug("group %s: cannot redeliver %r yet: %s", self.group, entry_id, _why(exc))
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
        else:
            return
        del self._waiting[ref]
        if not entries or entries[0][1] is None:
            self._held.pop(ref, None)  # acked by someone else meanwhile, or trimmed away
            return
        self._enqueue(stream, entry_id, entries[0][1], delivery.attempt + 1)


class _Settle:
    """Acks and nacks one entry of one stream for its subscription."""

    __slots__ = ("subscription", "stream", "entry_id")

    def __init__(self, subscription: RedisSubscription, stream: str, entry_id: bytes) -> None:
        self.subscription = subscription
        self.stream = stream
        self.entry_id = entry_id

    async def ack(self, delivery: Delivery) -> None:
        await self.subscription._ack(self.stream, self.entry_id)

    async def nack(self, delivery: Delivery, delay: float) -> None:
        await self.subscription._nack(self.stream, self.entry_id, delivery, delay)


def _ref(delivery: Delivery) -> _EntryRef:
    settle = delivery._settle
    assert isinstance(settle, _Settle)
    return (settle.stream, settle.entry_id)


def _id_order(entry_id: bytes) -> tuple[int, ...]:
    """An entry id (``b"1700000000000-3"``) as numbers, so ids sort as Redis orders them."""
    return tuple(int(part) for part in entry_id.split(b"-"))


def _entry_order(ref: _EntryRef) -> tuple[str, tuple[int, ...]]:
    return ref[0], _id_order(ref[1])


def _decode(topic: str, partition: int, fields: dict[bytes, bytes], attempt: int) -> Delivery:
    """A Delivery from a stream entry's fields.

    Lenient on purpose: an entry someone else XADDed without our fields is still delivered (with
    empty metadata) so the consumer quarantines it with a reason instead of it vanishing here.
    """
    try:
        headers = json.loads(fields.get(b"headers", b"{}"))
    except ValueError:
        headers = {}
    return Delivery(
        topic=topic,
        key=fields.get(b"key", b"").decode(errors="replace"),
        partition=partition,
        event_id=fields.get(b"event_id", b"").decode(errors="replace"),
        headers=headers if isinstance(headers, dict) else {},
        payload=fields.get(b"payload", b""),
        attempt=attempt,
    )


def _why(exc: BaseException) -> str:
    """``exc`` as a reader wants it (redis-py's own repr hides the message)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
