"""The consumer against real broker servers and PostgreSQL: every broker, and NATS under crashes and restarts.

The servers are the private ones of the broker conformance suite (``server_*.py``), so a test can
kill, stop and restart them without disturbing anything else.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from broker_server import BrokerServer
from consumer_model import TOPIC, effects, message, numbered, numbers_consumer, prepare, publish
from server_nats import ACK_WAIT, NatsServer, _binary
from support import POSTGRES_URL, StoreFactory
from tidings.brokers.nats import consumer_name
from tidings.runtime import Consumer, DeadLetters
from tidings.store import Store

TESTS = Path(__file__).parent.parent


async def settle(consumer: Consumer, task: asyncio.Task[None], check: Callable[[], Awaitable[bool]], what: str, timeout: float = 60) -> None:
    """Wait until ``check()`` holds and the consumer holds nothing un-acked; fail with ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while not (await check() and consumer.in_flight == 0):
        if task.done():
            task.result()
            pytest.fail(f"the consumer stopped before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting until {what} (stats: {consumer.stats})")
        await asyncio.sleep(0.05)


async def subscribed(consumer: Consumer, task: asyncio.Task[None], timeout: float = 30) -> None:
    """Wait until the consumer reads its shards (RabbitMQ keeps only what arrives after a group's queue exists)."""
    deadline = time.monotonic() + timeout
    while not consumer.subscribed:
        if task.done():
            task.result()
        assert time.monotonic() < deadline, "the consumer never subscribed"
        await asyncio.sleep(0.05)


def store_url(store: Store) -> str:
    return f"{POSTGRES_URL}?options={quote(f'-c search_path={store.schema}')}"  # type: ignore[attr-defined]


def spawn(store: Store, broker_url: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """``tidings consume consumer_model:build`` in a process of its own."""
    environment = {
        **os.environ,
        "TIDINGS_DATABASE_URL": store_url(store),
        "TIDINGS_BROKER_URL": broker_url,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "COLUMNS": "200",
        **env,
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tidings.cli", "consume", "consumer_model:build"], env=environment, stdout=out, stderr=out
        )


async def wait_for(check: Callable[[], Awaitable[bool]], what: str, processes: list[subprocess.Popen[bytes]], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        for process in processes:
            if process.poll() is not None:
                pytest.fail(f"a consumer process exited ({process.returncode}) before {what}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}:\n{log.read_text()[-4000:]}")
        await asyncio.sleep(0.1)


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


async def nothing_pending(server: NatsServer, group: str = "numbers") -> bool:
    """Whether the group's JetStream consumer has every message delivered and acked."""
    import nats

    nc = await nats.connect(server.url)
    try:
        info = await nc.jetstream().consumer_info("TIDINGS", consumer_name(group, TOPIC))
        return info.num_pending == 0 and info.num_ack_pending == 0
    except Exception:
        return False
    finally:
        await nc.close()


# -- every broker --------------------------------------------------------------------------------


async def test_every_broker_gets_each_message_applied_once_in_order_with_poison_dead_lettered(
    broker_server: BrokerServer, postgres_store_factory: StoreFactory
) -> None:
    # Given a consumer on PostgreSQL reading the broker, and a handler that always fails on bad#3
    store = await postgres_store_factory()
    await prepare(store)
    await store.run("INSERT INTO consumer_failing (key, n) VALUES ('bad', 3)")
    broker = await broker_server.broker()
    consumer = numbers_consumer(store, broker, concurrency=4, batch_size=20)
    stop_event = asyncio.Event()
    task = asyncio.get_running_loop().create_task(consumer.run(stop_event))
    try:
        await subscribed(consumer, task)

        # When 8 keys publish 10 messages each (bad among them)
        keys = ["bad"] + [f"k{i}" for i in range(7)]
        await publish(await broker_server.broker(), numbered(keys, 10))
        await settle(consumer, task, lambda: _settled(store, 80), "all 80 are applied or dead-lettered")
    finally:
        stop_event.set()
        await asyncio.wait_for(task, 30)

    # Then each good key's messages were applied once, in order; bad stopped at #3, which is dead, the rest held
    applied = await effects(store)
    assert {key: numbers for key, numbers in applied.items() if key != "bad"} == {f"k{i}": list(range(1, 11)) for i in range(7)}
    assert applied["bad"] == [1, 2]
    rows = await DeadLetters(store).list(consumer="numbers")
    assert [(json.loads(r.payload)["n"], r.status) for r in rows] == [(3, "dead")] + [(n, "held") for n in range(4, 11)]
    assert rows[0].error == "RuntimeError: bad #3 is poisoned"


async def _settled(store: Store, total: int) -> bool:
    done = int((await store.fetch("SELECT count(*) FROM consumer_effects"))[0][0])
    parked = int((await store.fetch("SELECT count(*) FROM tidings_dead_letters"))[0][0])
    return done + parked >= total


# -- NATS: processes, crashes, restarts ----------------------------------------------------------


@pytest.fixture
async def nats_server(tmp_path: Path) -> Any:
    """A private JetStream server for one test (stopped and started for real)."""
    server = NatsServer(_binary(), tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def test_two_consumer_processes_share_the_work_and_keep_order_per_key(
    nats_server: NatsServer, postgres_store_factory: StoreFactory, tmp_path: Path
) -> None:
    # Given two processes of one consumer with two shards, each reading one of them
    store = await postgres_store_factory()
    await prepare(store)
    log = tmp_path / "consumers.log"
    url = f"{nats_server.url}?ack_wait={ACK_WAIT}"
    members = [spawn(store, url, log, CONSUMER_SHARDS="2", CONSUMER_MEMBER=name) for name in ("one", "two")]
    try:
        await wait_for(lambda: _one_shard_each(store), "each process reads one shard", members, log)

        # When 24 keys publish 15 numbered messages each
        keys = [f"key-{i}" for i in range(24)]
        await publish(await nats_server.broker(), numbered(keys, 15))
        await wait_for(lambda: _effect_count(store, 360), "all 360 are applied", members, log)
        await wait_for(lambda: nothing_pending(nats_server, "numbers.s0"), "shard 0 acked everything", members, log)
        await wait_for(lambda: nothing_pending(nats_server, "numbers.s1"), "shard 1 acked everything", members, log)
    finally:
        stop(members)

    # Then every message was applied once, each key in order, and both processes did part of the work
    assert await effects(store) == {key: list(range(1, 16)) for key in keys}
    by_member = await store.fetch("SELECT member, count(DISTINCT key), count(*) FROM consumer_effects GROUP BY member")
    shares = {member: (keys_seen, applied) for member, keys_seen, applied in by_member}
    assert set(shares) == {"one", "two"}, shares
    assert sum(keys_seen for keys_seen, _ in shares.values()) == 24, "a key was applied by both processes"


async def _one_shard_each(store: Store) -> bool:
    rows = await store.fetch("SELECT shards FROM tidings_consumer_members WHERE consumer = 'numbers'")
    return sorted(shards for (shards,) in rows) == ["0", "1"]


async def _effect_count(store: Store, expected: int) -> bool:
    return int((await store.fetch("SELECT count(*) FROM consumer_effects"))[0][0]) >= expected


async def test_a_consumer_killed_between_commit_and_ack_on_nats_has_the_redelivery_skipped(
    nats_server: NatsServer, postgres_store_factory: StoreFactory, tmp_path: Path
) -> None:
    # Given 40 published messages and a consumer process whose acks never complete
    store = await postgres_store_factory()
    await prepare(store)
    await publish(await nats_server.broker(), numbered(["a", "b", "c", "d"], 10))
    log = tmp_path / "consumer.log"
    url = f"{nats_server.url}?ack_wait={ACK_WAIT}"
    doomed = spawn(store, url, log, STALL_ACKS="1")
    try:
        # When it has committed all 40 (acking none) and is killed with SIGKILL
        await wait_for(lambda: _effect_count(store, 40), "all 40 are committed", [doomed], log)
        assert not await nothing_pending(nats_server)
    finally:
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)

    # Then NATS delivers them again to the next process, which skips them all by its inbox and acks them
    deliveries = tmp_path / "deliveries.txt"
    survivor = spawn(store, url, log, DELIVERIES_LOG=str(deliveries))
    try:
        await wait_for(lambda: nothing_pending(nats_server), "the redeliveries are acked", [survivor], log)
    finally:
        stop([survivor])
    assert len(set(deliveries.read_text().split())) == 40
    assert await effects(store) == {key: list(range(1, 11)) for key in "abcd"}
    assert int((await store.fetch("SELECT count(*) FROM tidings_inbox"))[0][0]) == 40


async def test_a_message_whose_handler_keeps_dying_is_dead_lettered_after_max_deliveries(
    nats_server: NatsServer, postgres_store_factory: StoreFactory, tmp_path: Path
) -> None:
    # Given a message whose handler hangs, in a consumer that allows 2 deliveries
    store = await postgres_store_factory()
    await prepare(store)
    stuck = message("stuck", 1)
    await publish(await nats_server.broker(), [stuck, message("fine", 1)])
    log = tmp_path / "consumer.log"
    deliveries = tmp_path / "deliveries.txt"
    url = f"{nats_server.url}?ack_wait={ACK_WAIT}"

    # When two processes in a row die while handling it (SIGKILL)
    for round_no in (1, 2):
        victim = spawn(store, url, log, HANG_KEY="stuck", MAX_DELIVERIES="2", DELIVERIES_LOG=str(deliveries))
        try:
            await wait_for(
                lambda: _delivered_times(deliveries, stuck.event_id, round_no), f"delivery {round_no} of the stuck one", [victim], log
            )
        finally:
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)

    # Then the third delivery is dead-lettered without running the handler, saying why
    survivor = spawn(store, url, log, MAX_DELIVERIES="2")
    try:
        await wait_for(lambda: nothing_pending(nats_server), "the third delivery is settled", [survivor], log)
    finally:
        stop([survivor])
    [dead] = await DeadLetters(store).list(consumer="numbers")
    assert (dead.key, dead.status, dead.reason) == ("stuck", "dead", "delivered 3 times without being settled")
    assert await effects(store) == {"fine": [1]}


async def _delivered_times(path: Path, event_id: str, times: int) -> bool:
    return path.exists() and path.read_text().split().count(event_id) >= times


async def test_the_consumer_rides_out_a_nats_restart_without_losing_or_doubling_anything(
    nats_server: NatsServer, postgres_store_factory: StoreFactory
) -> None:
    # Given a consumer applying a stream of messages
    store = await postgres_store_factory()
    await prepare(store)
    broker = await nats_server.broker()
    consumer = numbers_consumer(store, broker, concurrency=4, batch_size=10)
    stop_event = asyncio.Event()
    task = asyncio.get_running_loop().create_task(consumer.run(stop_event))
    try:
        await subscribed(consumer, task)
        publisher = await nats_server.broker()
        keys = [f"k{i}" for i in range(5)]
        await publish(publisher, numbered(keys, 10))

        # When the server is stopped and started again, and more messages follow
        await nats_server.restart()
        later = [message(key, n) for n in range(11, 21) for key in keys]
        pending = later
        for _ in range(60):
            results = await publisher.publish(pending)
            pending = [m for m, r in zip(pending, results, strict=True) if r is not None]
            if not pending:
                break
            await asyncio.sleep(0.5)
        assert not pending, "the server never came back"
        await settle(consumer, task, lambda: _effect_count(store, 100), "all 100 are applied")
    finally:
        stop_event.set()
        await asyncio.wait_for(task, 30)

    # Then every message was applied exactly once, in order per key
    assert await effects(store) == {key: list(range(1, 21)) for key in keys}


async def test_a_consumer_whose_group_is_deleted_on_the_server_subscribes_again_and_applies_nothing_twice(
    nats_server: NatsServer, postgres_store_factory: StoreFactory
) -> None:
    # Given a consumer that applied 20 messages
    import nats

    store = await postgres_store_factory()
    await prepare(store)
    consumer = numbers_consumer(store, await nats_server.broker())
    stop_event = asyncio.Event()
    task = asyncio.get_running_loop().create_task(consumer.run(stop_event))
    try:
        await subscribed(consumer, task)
        publisher = await nats_server.broker()
        await publish(publisher, numbered(["a", "b"], 10))
        await settle(consumer, task, lambda: _effect_count(store, 20), "the first 20 are applied")

        # When an operator deletes the group's JetStream consumer, and 20 more messages follow
        nc = await nats.connect(nats_server.url)
        try:
            await nc.jetstream().delete_consumer("TIDINGS", consumer_name("numbers", TOPIC))
        finally:
            await nc.close()
        await publish(publisher, [message(key, n) for n in range(11, 21) for key in ("a", "b")])
        await settle(consumer, task, lambda: _effect_count(store, 40), "all 40 are applied")
    finally:
        stop_event.set()
        await asyncio.wait_for(task, 30)

    # Then the recreated group (which starts from the stream's beginning) applied only the new ones
    assert await effects(store) == {"a": list(range(1, 21)), "b": list(range(1, 21))}
    assert consumer.stats.duplicates >= 20


_HOLDING_MEMBER = """
import asyncio, sys
from tidings.brokers.nats import from_url

async def main():
    broker = from_url(sys.argv[1])
    await broker.connect()
    held = 0
    async for delivery in await broker.subscribe([sys.argv[2]], "takeover"):
        held += 1  # received, never settled
        if held == 5:
            print("holding", flush=True)
            await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_member_taking_over_from_one_killed_mid_batch_on_nats_gets_the_keys_older_messages_first(
    nats_server: NatsServer,
) -> None:
    # Given a member of a group that received a key's messages 1-5 and was killed (SIGKILL) before settling them
    publisher = await nats_server.broker()
    await publish(publisher, [message("k", n) for n in range(1, 6)])
    doomed = subprocess.Popen(
        [sys.executable, "-c", _HOLDING_MEMBER, f"{nats_server.url}?ack_wait={ACK_WAIT}", TOPIC],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        line = await asyncio.wait_for(asyncio.to_thread(doomed.stdout.readline), 30)  # type: ignore[union-attr]
        assert line.strip() == "holding"
    finally:
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)

    # When messages 6-10 of the key follow and a new member reads the group at once (before ack_wait runs out)
    await publish(publisher, [message("k", n) for n in range(6, 11)])
    successor = await nats_server.broker()
    subscription = await successor.subscribe([TOPIC], "takeover")
    seen: list[int] = []

    async def read() -> None:
        async for delivery in subscription:
            n = json.loads(delivery.payload)["n"]
            if n not in seen:
                seen.append(n)
            await delivery.ack()
            if len(seen) == 10:
                return

    try:
        await asyncio.wait_for(read(), 30)
    finally:
        await subscription.close()
        await successor.close()
        await publisher.close()

    # Then it gets them in the key's order: the dead member's unsettled 1-5 (redelivered) before 6-10
    assert seen == list(range(1, 11))
