"""Hostile values at a consumer: every one dead-lettered with its reason at once, none loops, none vanishes.

The messages come from a local broker on a SQLite file of its own, which carries any string (NUL
bytes, 40 KB ids) to a consumer on either store — as NATS, Kafka or a foreign producer would.
Found by the security review (issue 15, finding 3): on PostgreSQL such a message was retried
forever, ~540 rolled-back transactions a second, never acked, never dead-lettered, nothing logged.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from consumer_model import Numbered, effects, message, numbers_consumer, prepare, publish, registry
from tidings.brokers.base import OutgoingMessage
from tidings.brokers.local import LocalBroker
from tidings.messaging import new_id
from tidings.runtime import Consumer, DeadLetters, HandlerContext
from tidings.store import Store, open_store

from test_consumer import running


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[LocalBroker]:
    """A local broker on a SQLite file of its own: it stores whatever it is given, like a foreign broker."""
    log_store = await open_store(f"sqlite:///{tmp_path / 'broker.db'}")
    try:
        yield LocalBroker(log_store, poll_interval=0.02)
    finally:
        await log_store.close()


async def all_acked(broker: LocalBroker, group: str = "numbers") -> bool:
    log = broker.store
    last = (await log.fetch("SELECT coalesce(max(position), 0) FROM tidings_local_log"))[0][0]
    done = await log.fetch("SELECT position FROM tidings_local_offsets WHERE group_name = ?", (group,))
    return bool(done) and int(done[0][0]) >= int(last)


def spoiled(key: str, n: int, *, header: str | None = None, value: Any = "", new_key: str | None = None) -> OutgoingMessage:
    """The n-th message of ``key`` with one header (or the key) replaced by ``value``."""
    good = message(key, n)
    headers = dict(good.headers)
    if header is not None:
        headers[header] = value
    return dataclasses.replace(good, headers=headers, key=good.key if new_key is None else new_key)


def noise(size: int) -> str:
    """``size`` printable characters that do not compress (PostgreSQL compresses long index entries)."""
    return base64.b64encode(random.Random(size).randbytes(size))[:size].decode()


BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "event id of 10 KB": (dict(header="tidings-event_id", value=noise(10_000)), "tidings-event_id"),
    "event id of 40 KB": (dict(header="tidings-event_id", value=noise(40_000)), "tidings-event_id"),
    "NUL in the event id": (dict(header="tidings-event_id", value="0190\x00dead"), "tidings-event_id"),
    "NUL in the key": (dict(new_key="bad\x00key"), "key"),
    "key of 40 KB": (dict(new_key=noise(40_000)), "key"),
    "NUL in the tenant": (dict(header="tidings-tenant", value="acme\x00"), "tidings-tenant"),
    "NUL in the event type": (dict(header="tidings-event_type", value="test.Numbered\x00"), "tidings-event_type"),
    "schema version over 32 bits": (dict(header="tidings-schema_version", value=str(2**40)), "tidings-schema_version"),
    "correlation id of 40 KB": (dict(header="tidings-correlation_id", value=noise(40_000)), "tidings-correlation_id"),
    # Headers travel as JSON on the local log and Redis, so a foreign producer can send other types.
    "tenant that is a number": (dict(header="tidings-tenant", value=5), "tidings-tenant"),
    "schema version that is a list": (dict(header="tidings-schema_version", value=[2]), "tidings-schema_version"),
}


@pytest.mark.parametrize("kind", list(BAD_VALUES))
async def test_a_value_no_column_can_hold_is_dead_lettered_at_once_with_the_reason_and_never_loops(
    store: Store, broker: LocalBroker, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a good message, a message with one hostile value, and another good one of another key
    await prepare(store)
    spoil, field = BAD_VALUES[kind]
    bad = spoiled("bad", 1, **spoil)
    await publish(broker, [message("good", 1), bad, message("other", 1)])

    # When a consumer runs until the broker has every message acked
    consumer = numbers_consumer(store, broker)
    caplog.set_level(logging.ERROR, "tidings.consumer")
    async with running(consumer) as run:
        await run.until(lambda: all_acked(broker), "all three are acked", timeout=20)

    # Then the hostile one is dead at once, saying which value is wrong; the good ones are applied
    [dead] = await DeadLetters(store).list(consumer="numbers")
    assert (dead.status, dead.reason, dead.attempts) == ("dead", "not retryable", 0)
    assert dead.error.startswith("InvalidMetadata: "), dead.error
    assert field in dead.error, dead.error
    assert len(dead.error) < 1000, "the error quotes a preview of the value, not all of it"
    assert dead.payload == bad.payload
    assert await effects(store) == {"good": [1], "other": [1]}
    # ...the table kept the raw headers whole (as escaped JSON), the key escaped and bounded, and the log said it once
    assert dead.headers == dict(bad.headers)
    assert "\x00" not in dead.key and len(dead.key) < 600
    assert sum("dead-lettered" in r.getMessage() for r in caplog.records) == 1
    # ...and nothing was rolled back over and over
    assert consumer.stats.rollbacks <= 2, consumer.stats


async def test_a_redelivered_hostile_message_is_dead_lettered_only_once(store: Store, broker: LocalBroker) -> None:
    # Given a message with a NUL in its event id, dead-lettered once
    await prepare(store)
    bad = spoiled("bad", 1, header="tidings-event_id", value="x\x00y")
    await publish(broker, [bad])
    async with running(numbers_consumer(store, broker)) as run:
        await run.until(lambda: all_acked(broker), "it is acked")

    # When the broker delivers it again (the group's offset rewound)
    await broker.store.run("UPDATE tidings_local_offsets SET position = 0")
    again = numbers_consumer(store, broker)
    async with running(again) as run:
        await run.until(lambda: all_acked(broker), "the redelivery is acked")

    # Then the inbox knew it (by a stand-in id derived from the bad one): still one dead letter
    assert len(await DeadLetters(store).list(consumer="numbers")) == 1
    assert again.stats.duplicates == 1


async def test_an_event_id_reused_with_another_payload_is_dead_lettered_and_a_true_redelivery_skipped(
    store: Store, broker: LocalBroker
) -> None:
    # Given a message applied once
    await prepare(store)
    first = message("k", 1)
    await publish(broker, [first])
    consumer = numbers_consumer(store, broker)
    async with running(consumer) as run:
        await run.until(lambda: all_acked(broker), "the first is acked")

        # When the same event id comes again with the same payload, and twice with a different one
        # (the broker's own id differs each time, as a foreign producer's would)
        same = dataclasses.replace(first, event_id=new_id())
        other_payload = msgspec.json.encode({"key": "k", "n": 666})
        forged = dataclasses.replace(first, event_id=new_id(), payload=other_payload)
        forged_again = dataclasses.replace(first, event_id=new_id(), payload=other_payload)
        await publish(broker, [same, forged, forged_again, message("k2", 1)])
        await run.until(lambda: all_acked(broker), "all are acked")

    # Then the true redelivery and the forged one's own redelivery were skipped; the forged one is dead, saying why
    assert await effects(store) == {"k": [1], "k2": [1]}
    [dead] = await DeadLetters(store).list(consumer="numbers")
    assert (dead.status, dead.reason, dead.event_id) == ("dead", "not retryable", first.event_id)
    assert dead.error.startswith("ReusedEventId: "), dead.error
    assert "different payload" in dead.error
    assert dead.payload == other_payload
    assert consumer.stats.duplicates == 2


async def test_an_event_id_reused_with_another_payload_within_one_batch_is_dead_lettered(
    store: Store, broker: LocalBroker
) -> None:
    # Given two messages with one event id and different payloads, delivered together
    await prepare(store)
    first = message("k", 1)
    forged = dataclasses.replace(first, event_id=new_id(), payload=msgspec.json.encode({"key": "k", "n": 2}))
    await publish(broker, [first, forged])

    # When they are consumed
    async with running(numbers_consumer(store, broker, linger=0.2)) as run:
        await run.until(lambda: all_acked(broker), "both are acked")

    # Then the first is applied and the second is dead as a reused id
    assert await effects(store) == {"k": [1]}
    [dead] = await DeadLetters(store).list(consumer="numbers")
    assert dead.error.startswith("ReusedEventId: "), dead.error


async def test_a_queued_write_that_fails_twice_the_same_way_dead_letters_its_message_without_more_retries(
    store: Store, broker: LocalBroker
) -> None:
    # Given a handler whose queued write violates a constraint for one message (n = 13) only
    # (with a generated id, which PostgreSQL quotes in the error's detail: different on each attempt)
    serial = "BIGSERIAL PRIMARY KEY" if store.dialect == "postgresql" else "INTEGER PRIMARY KEY AUTOINCREMENT"
    await store.run(f"CREATE TABLE strict_effects (id {serial}, n INTEGER NOT NULL CHECK (n <> 13))")
    await publish(broker, [message("k", 12), message("k", 13), message("other", 1)])
    consumer = Consumer("numbers", store, broker, registry=registry(), on_dead="skip")

    @consumer.handler(Numbered)
    async def record(event: Numbered, ctx: HandlerContext) -> None:
        ctx.write("INSERT INTO strict_effects (n) VALUES (?)", (event.n,))

    # When the consumer has settled all three
    async with running(consumer) as run:
        await run.until(lambda: all_acked(broker), "all are acked")

    # Then #13 is dead after two runs that failed alike (not after the whole retry schedule), the rest applied
    [dead] = await DeadLetters(store).list(consumer="numbers")
    assert json.loads(dead.payload)["n"] == 13
    assert dead.reason == "its transaction failed twice the same way"
    assert dead.attempts == 2
    assert sorted(n for (n,) in await store.fetch("SELECT n FROM strict_effects")) == [1, 12]


async def test_a_handler_write_the_store_refuses_twice_the_same_way_dead_letters_its_message_without_more_retries(
    store: Store, broker: LocalBroker
) -> None:
    # Given a handler that writes directly (not queued) a value a constraint refuses for one message only
    serial = "BIGSERIAL PRIMARY KEY" if store.dialect == "postgresql" else "INTEGER PRIMARY KEY AUTOINCREMENT"
    await store.run(f"CREATE TABLE strict_effects (id {serial}, n INTEGER NOT NULL CHECK (n <> 13))")
    await publish(broker, [message("k", 12), message("k", 13), message("other", 1)])
    consumer = Consumer("numbers", store, broker, registry=registry(), on_dead="skip")
    runs: list[int] = []

    @consumer.handler(Numbered)
    async def record(event: Numbered, ctx: HandlerContext) -> None:
        runs.append(event.n)
        await ctx.tx.run("INSERT INTO strict_effects (n) VALUES (?)", (event.n,))

    # When the consumer has settled all three
    async with running(consumer) as run:
        await run.until(lambda: all_acked(broker), "all are acked")

    # Then #13 ran twice and is dead with the store's error; a handler's other errors keep their retries
    [dead] = await DeadLetters(store).list(consumer="numbers")
    assert (json.loads(dead.payload)["n"], dead.reason, dead.attempts) == (13, "its transaction failed twice the same way", 2)
    assert runs.count(13) == 2
    assert sorted(n for (n,) in await store.fetch("SELECT n FROM strict_effects")) == [1, 12]


async def test_a_dead_letter_the_database_refuses_is_reported_and_waited_out_never_spun_on(
    store: Store, broker: LocalBroker, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a dead-letter table that refuses every row (a constraint someone added), and garbage then good messages
    await prepare(store)
    if store.dialect == "postgresql":
        await store.run("ALTER TABLE tidings_dead_letters ADD CONSTRAINT no_dead_letters CHECK (attempts < 0)")
    else:
        await store.run(
            "CREATE TRIGGER no_dead_letters BEFORE INSERT ON tidings_dead_letters BEGIN SELECT RAISE(ABORT, 'no dead letters'); END"
        )
    await publish(broker, [message("bad", 1, payload=b"{garbage"), message("good", 1)])
    consumer = numbers_consumer(store, broker)
    caplog.set_level(logging.ERROR, "tidings.consumer")

    # When the consumer runs for two seconds
    async with running(consumer) as run:
        await run.until(lambda: _applied(store, "good"), "the good one is applied")
        started, rollbacks = time.monotonic(), consumer.stats.rollbacks
        await asyncio.sleep(2.0)  # a window to count in: nothing observable marks "not spinning"
        spent = time.monotonic() - started
        during = consumer.stats.rollbacks - rollbacks

    # Then the garbage stayed un-acked (nothing lost) and was retried with backoff, a few times, loudly
    assert not await all_acked(broker)
    assert during / spent < 5, f"{during} rollbacks in {spent:.1f} s"
    assert any("could not be dead-lettered" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


async def _applied(store: Store, key: str) -> bool:
    return key in await effects(store)
