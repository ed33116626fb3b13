"""One message registry for an application and the consumers on its store; upcasters only for names it knows."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from consumer_model import TOPIC, Numbered, message, publish
from tidings import Application, MessageRegistry
from tidings.brokers.local import LocalBroker
from tidings.runtime import Consumer, HandlerContext
from tidings.store import Store


async def test_an_upcaster_registered_on_the_application_is_known_to_its_consumers(store: Store) -> None:
    # Given an application with the v1 → v2 upcaster of Numbered, and a consumer on the same store
    app = Application(store, name="numbers")
    app.registry.register(Numbered)

    @app.registry.upcaster(TOPIC, 1)
    def seq_becomes_n(data: dict[str, Any]) -> dict[str, Any]:
        data["n"] = data.pop("seq")
        return data

    broker = LocalBroker(store, poll_interval=0.02)
    consumer = Consumer("numbers", store, broker, topics=[TOPIC])
    seen: list[int] = []

    @consumer.handler(Numbered)
    async def record(event: Numbered, ctx: HandlerContext) -> None:
        seen.append(event.n)

    # When a v1 message arrives
    await publish(broker, [message("k", 7, version=1)])
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        async with asyncio.timeout(10):
            while consumer.stats.applied + consumer.stats.dead < 1:
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await task
    # Then it was upcast and applied, not dead-lettered
    assert (seen, consumer.stats.dead) == ([7], 0)


async def test_a_consumer_given_its_store_later_joins_the_store_registry(store: Store) -> None:
    # Given a consumer declared without a store (as for `tidings consume`) that handles Numbered
    consumer = Consumer("numbers", topics=[TOPIC])

    @consumer.handler(Numbered)
    async def record(event: Numbered, ctx: HandlerContext) -> None: ...

    app = Application(store, name="numbers")
    # When it is attached to the application's store
    consumer.attach(store, LocalBroker(store))
    # Then it reads with the application's registry, which now knows what the consumer handles too
    assert consumer.registry is app.registry and TOPIC in app.registry


def test_an_upcaster_for_a_misspelled_name_is_refused_with_a_suggestion() -> None:
    # Given a registry that knows Numbered
    registry = MessageRegistry([Numbered])
    # When an upcaster is registered under a misspelled name / then it is refused, suggesting the right one
    with pytest.raises(ValueError, match=r"no message named 'test\.Numberd'.*did you mean 'test\.Numbered'"):
        registry.upcaster("test.Numberd", 1)


def test_an_upcaster_for_an_unregistered_name_says_how_to_register_it() -> None:
    registry = MessageRegistry()
    with pytest.raises(ValueError, match=r"register the class first"):
        registry.upcaster("learning.CoursePublished", 1)


def test_an_upcaster_from_the_current_version_is_refused() -> None:
    # Given Numbered at version 2 / when an upcaster from v2 is registered / then it could never run, so it is refused
    registry = MessageRegistry([Numbered])
    with pytest.raises(ValueError, match=r"v2 is the current version"):
        registry.upcaster(TOPIC, 2)


def test_an_upcaster_may_name_its_class() -> None:
    # Given an empty registry / when an upcaster names the class itself / then the class is registered with it
    registry = MessageRegistry()

    @registry.upcaster(Numbered, 1)
    def seq_becomes_n(data: dict[str, Any]) -> dict[str, Any]:
        return {"key": data["key"], "n": data["seq"]}

    assert registry.decode(TOPIC, 1, b'{"key": "k", "seq": 3}') == Numbered(key="k", n=3)
