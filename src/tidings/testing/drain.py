"""Run the relay and consumers of a test until nothing is pending: the outbox delivered and every consumer caught up.

::

    await drain(store, broker, [billing, audit])   # then assert on what the consumers did

A round publishes every ready outbox row (``Relay.drain``), then waits until each consumer has
settled everything on its topics (applied, skipped as a duplicate, ignored or dead-lettered). What
the handlers caused (commands whose translators fill the outbox again) starts another round; the
drain ends when a round finds nothing new. Idleness is read from the store, not guessed from a
pause: undelivered outbox rows, and each consumer group's offsets against the local broker's log.
That is why it needs the ``local:`` broker, the one whose log lives in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

from tidings.brokers.base import Broker
from tidings.brokers.local import LocalBroker
from tidings.runtime.consumer import Consumer
from tidings.runtime.relay import Relay
from tidings.store.base import Store

__all__ = ["drain"]

# How often the store is asked whether the consumers caught up (the condition, not a pause for it).
_CHECK_EVERY_S = 0.01


async def drain(
    store: Store,
    broker: Broker,
    consumers: Sequence[Consumer] = (),
    *,
    relay: Relay | None = None,
    timeout: float = 30.0,
) -> int:
    """Relay and consume until nothing is pending; return how many rounds it took (TimeoutError naming what is left).

    ``consumers`` must not be running already: they run here, for the length of the drain, and
    are stopped before it returns. A consumer that crashes re-raises its error here.
    """
    if not isinstance(broker, LocalBroker):
        raise TypeError(
            f"drain() reads the local broker's log to know when consumers caught up; got {type(broker).__name__} "
            "— use LocalBroker(store) in tests (a real broker's lag is not visible from the store)"
        )
    relay = relay or Relay(store, broker, idle_wait=0.05)
    deadline = time.monotonic() + timeout
    stop = asyncio.Event()
    tasks = [asyncio.create_task(consumer.attach(store, broker).run(stop)) for consumer in consumers]
    rounds = 0
    try:
        while True:
            rounds += 1
            await relay.drain(timeout=max(0.1, deadline - time.monotonic()))
            while pending := await _behind(store, consumers):
                _raise_if_crashed(tasks)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"drain: not idle after {timeout} s — {pending}")
                await asyncio.sleep(_CHECK_EVERY_S)
            waiting = await _undelivered(store)
            if not waiting:
                return rounds
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"drain: not idle after {timeout} s — {waiting} outbox rows are neither delivered nor parked "
                    "(a broker error being retried?)"
                )
    finally:
        stop.set()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _undelivered(store: Store) -> int:
    rows = await store.fetch("SELECT count(*) FROM tidings_outbox WHERE delivered_at IS NULL AND parked_at IS NULL")
    return int(rows[0][0])


async def _behind(store: Store, consumers: Sequence[Consumer]) -> str:
    """What is still pending: a consumer holding messages, or a group whose offset is behind its topic's log."""
    for consumer in consumers:
        if consumer.in_flight:
            return f"consumer {consumer.name!r} holds {consumer.in_flight} unsettled messages (stats: {consumer.stats})"
        for topic in consumer.topics:
            last = await store.fetch("SELECT coalesce(max(position), 0) FROM tidings_local_log WHERE topic = ?", (topic,))
            if not last[0][0]:
                continue
            for shard in range(max(consumer.shards, 1)):
                group = consumer.name if consumer.shards <= 1 else f"{consumer.name}.s{shard}"
                done = await store.fetch(
                    "SELECT position FROM tidings_local_offsets WHERE group_name = ? AND topic = ?", (group, topic)
                )
                if not done or int(done[0][0]) < int(last[0][0]):
                    at = int(done[0][0]) if done else 0
                    return f"consumer {consumer.name!r} ({group}) is at position {at} of {last[0][0]} on topic {topic!r}"
    return ""


def _raise_if_crashed(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        if task.done():
            task.result()  # raises what the consumer died of
            raise RuntimeError("drain: a consumer stopped before it caught up")
