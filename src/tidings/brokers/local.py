"""The local broker: the embedded default, a durable log in the store itself; no server.

Publishing appends to ``tidings_local_log``, de-duplicated by (event id, replay) like NATS's message
id: a relay's retry is stored once, an operator's replay (``tidings outbox replay``) again.
A consumer group reads each topic from its stored offset in log order; the offset advances to
the highest position below which every delivery was acked, so whatever was not acked when a
consumer died is delivered again to the next one. One member per group at a time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence

from tidings.brokers.base import Delivery, MessageRejected, OutgoingMessage
from tidings.store.base import Store

__all__ = ["LocalBroker"]

#: The local log lives in the store's own tables; keep rows well below a page-cache-busting size.
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024

# Publishers and subscribers of one process meet here, so a publish wakes a waiting subscriber
# at once; subscribers in other processes find new rows by polling.
_wakeups: dict[str, set[asyncio.Event]] = {}


class LocalBroker:
    """A Broker over the store's own log (``local:``)."""

    def __init__(self, store: Store, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, poll_interval: float = 0.2) -> None:
        self.store = store
        self.url = "local:"
        self.max_message_bytes = max_message_bytes
        self.poll_interval = poll_interval
        self._insert = (
            "INSERT INTO tidings_local_log (topic, partition, key, event_id, replay, headers, payload) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id, replay) DO NOTHING"
        )

    async def connect(self) -> None:
        # The log is part of the store's schema; nothing to connect to.
        await self.store.fetch("SELECT 1 FROM tidings_local_log LIMIT 1")

    async def publish(self, messages: Sequence[OutgoingMessage]) -> list[BaseException | None]:
        results: list[BaseException | None] = []
        rows = []
        for message in messages:
            if len(message.payload) > self.max_message_bytes:
                results.append(
                    MessageRejected(
                        f"{message.topic} message {message.event_id} is {len(message.payload)} bytes, over the local "
                        f"broker's limit of {self.max_message_bytes}"
                    )
                )
                continue
            results.append(None)
            rows.append(
                (
                    message.topic, message.partition, message.key, message.event_id, message.replay,
                    json.dumps(dict(message.headers)), message.payload,
                )  # fmt: skip
            )
        if rows:
            await self.store.run_many(self._insert, rows)
            for event in _wakeups.get(self.store.url, ()):
                event.set()
        return results

    async def subscribe(self, topics: Sequence[str], group: str) -> LocalSubscription:
        subscription = LocalSubscription(self, list(topics), group)
        await subscription.start()
        return subscription

    async def close(self) -> None:
        """Nothing to close: the store belongs to its owner."""


class LocalSubscription:
    """One consumer group's reader of the local log."""

    def __init__(self, broker: LocalBroker, topics: list[str], group: str) -> None:
        self.broker = broker
        self.store = broker.store
        self.topics = topics
        self.group = group
        self._offsets: dict[str, int] = {}
        self._read_up_to = 0
        self._in_flight: dict[int, bool] = {}  # position -> acked, in position order
        self._topic_of: dict[int, str] = {}
        self._retry: asyncio.Queue[Delivery] = asyncio.Queue()
        self._wakeup = asyncio.Event()
        self._timers: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self) -> None:
        placeholders = ",".join("?" for _ in self.topics)
        rows = await self.store.fetch(
            f"SELECT topic, position FROM tidings_local_offsets WHERE group_name = ? AND topic IN ({placeholders})",
            (self.group, *self.topics),
        )
        self._offsets = {topic: 0 for topic in self.topics} | {topic: int(pos) for topic, pos in rows}
        self._read_up_to = min(self._offsets.values(), default=0)
        _wakeups.setdefault(self.store.url, set()).add(self._wakeup)

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self._deliveries()

    async def _deliveries(self) -> AsyncIterator[Delivery]:
        placeholders = ",".join("?" for _ in self.topics)
        while not self._closed:
            while not self._retry.empty():
                yield self._retry.get_nowait()
            rows = await self.store.fetch(
                "SELECT position, topic, partition, key, event_id, headers, payload FROM tidings_local_log "
                f"WHERE topic IN ({placeholders}) AND position > ? ORDER BY position LIMIT 500",
                (*self.topics, self._read_up_to),
            )
            for position, topic, partition, key, event_id, headers, payload in rows:
                self._read_up_to = max(self._read_up_to, int(position))
                if int(position) <= self._offsets.get(topic, 0):
                    continue  # acked before, by this group
                self._in_flight[int(position)] = False
                self._topic_of[int(position)] = topic
                yield Delivery(
                    topic=topic,
                    key=key,
                    partition=int(partition),
                    event_id=event_id,
                    headers=json.loads(headers),
                    payload=bytes(payload),
                    attempt=1,  # each log row is read once per subscription; a nack counts on from there
                    _settle=_Settle(self, int(position)),
                )
            if not rows and self._retry.empty():
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), self.broker.poll_interval)
                except TimeoutError:
                    pass

    async def _ack(self, position: int) -> None:
        if position not in self._in_flight:
            return
        self._in_flight[position] = True
        advanced: dict[str, int] = {}
        # The offset may only pass positions that are all acked: pop the acked prefix.
        for pos in sorted(self._in_flight):
            if not self._in_flight[pos]:
                break
            del self._in_flight[pos]
            advanced[self._topic_of.pop(pos)] = pos
        for topic, pos in advanced.items():
            self._offsets[topic] = pos
            # Concurrent acks write from several connections (PostgreSQL): a lower offset that
            # commits last must not move the group back.
            await self.store.run(
                "INSERT INTO tidings_local_offsets (group_name, topic, position) VALUES (?, ?, ?) "
                "ON CONFLICT (group_name, topic) DO UPDATE SET position = excluded.position "
                "WHERE tidings_local_offsets.position < excluded.position",
                (self.group, topic, pos),
            )

    async def _nack(self, delivery: Delivery, position: int, delay: float) -> None:
        async def later() -> None:
            await asyncio.sleep(delay)
            delivery.attempt += 1
            await self._retry.put(delivery)
            self._wakeup.set()

        timer = asyncio.get_running_loop().create_task(later())
        self._timers.add(timer)  # held so the task is not collected before it fires
        timer.add_done_callback(self._timers.discard)

    async def close(self) -> None:
        self._closed = True
        for timer in self._timers:
            timer.cancel()
        self._wakeup.set()
        _wakeups.get(self.store.url, set()).discard(self._wakeup)


class _Settle:
    def __init__(self, subscription: LocalSubscription, position: int) -> None:
        self.subscription = subscription
        self.position = position

    async def ack(self, delivery: Delivery) -> None:
        await self.subscription._ack(self.position)

    async def nack(self, delivery: Delivery, delay: float) -> None:
        await self.subscription._nack(delivery, self.position, delay)


