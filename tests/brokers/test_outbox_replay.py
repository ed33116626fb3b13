"""``tidings outbox replay`` of a delivered row reaches every broker again, under the same event id.

Brokers that de-duplicate by message id (the local log, NATS JetStream) must store a replay as a
new publication while still storing a relay's retry once; consumers keep exactly-once effects
through their inbox, because the envelope's event id never changes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from broker_server import BrokerServer
from consumer_model import TOPIC, Numbered, effects, numbers_consumer, prepare
from tidings.app.outgoing import outbox_entry
from tidings.runtime import Consumer, Relay
from tidings.store import Store, open_store
from tidings.store.outbox import Outbox
from tidings.store.records import Changes


async def settle(consumers: list[Consumer], tasks: list[asyncio.Task[None]], check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait until ``check()`` holds and no consumer holds anything un-acked."""
    deadline = time.monotonic() + 60
    while not (await check() and all(c.in_flight == 0 for c in consumers)):
        for task in tasks:
            if task.done():
                task.result()
                pytest.fail(f"a consumer stopped before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what} (stats: {[c.stats for c in consumers]})")
        await asyncio.sleep(0.05)


async def commit_numbered(store: Store, key: str, n: int) -> int:
    """Commit one Numbered to the outbox, as a command handler would; its outbox row id."""
    _, entry = outbox_entry(Numbered(key=key, n=n), topic=TOPIC, key=key, source="numbers")
    await store.commit(Changes(outbox=[entry]))
    [row_id] = [row.id for row in await store.read_outbox() if row.event_id == entry.event_id]
    return row_id


async def test_a_replayed_delivered_row_is_applied_by_the_consumer_that_lost_it_and_skipped_by_the_other(
    broker_server: BrokerServer, tmp_path: Path
) -> None:
    # Given an event relayed to the broker and applied by two consumer groups
    store = await open_store(f"sqlite:///{tmp_path / 'app.db'}")
    await prepare(store)
    row_id = await commit_numbered(store, "k", 1)
    relay_broker, broker_a, broker_b = [await broker_server.broker() for _ in range(3)]
    applied, lost = numbers_consumer(store, broker_a, name="applied"), numbers_consumer(store, broker_b, name="lost")
    stop = asyncio.Event()
    tasks = [asyncio.create_task(consumer.run(stop)) for consumer in (applied, lost)]
    try:
        # (RabbitMQ keeps only what arrives after a group's queue exists)
        await settle([applied, lost], tasks, lambda: _true(applied.subscribed and lost.subscribed), "both groups subscribed")
        await Relay(store, relay_broker).drain()
        both_have_it = lambda: _both(store, {"k": [1]}, {"k": [1]})  # noqa: E731
        await settle([applied, lost], tasks, both_have_it, "both groups applied the event")

        # And the "lost" group's database is restored from a backup taken before it applied it
        await store.run("DELETE FROM consumer_effects WHERE consumer = 'lost'")
        await store.run("DELETE FROM tidings_inbox WHERE consumer = 'lost'")

        # When an operator replays the delivered row and the relay runs
        [replay] = await Outbox(store).replay([row_id])
        assert (replay.outcome, replay.replay) == ("replayed", 1)
        await Relay(store, relay_broker).drain()

        # Then the broker delivers it again: the lost group applies it, the other skips it (inbox)
        await settle([applied, lost], tasks, both_have_it, "the lost group applied the replay")
        await settle([applied, lost], tasks, lambda: _true(applied.stats.duplicates == 1), "the applied group skipped the replay")
        assert (applied.stats.applied, lost.stats.applied) == (1, 2)
        rows = await store.fetch("SELECT event_id FROM consumer_effects ORDER BY id")
        assert len({event_id for (event_id,) in rows}) == 1  # one event id throughout
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.close()


async def _both(store: Store, applied: dict[str, list[int]], lost: dict[str, list[int]]) -> bool:
    return await effects(store, "applied") == applied and await effects(store, "lost") == lost


async def _true(value: bool) -> bool:
    return value
