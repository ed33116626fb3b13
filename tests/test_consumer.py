"""The consumer on both stores with the local broker (a real durable log in the same database).

Exactly-once effects, order per key, retries, dead letters, parking, replay and pruning — each
caused for real: messages delivered twice, a process killed with SIGKILL between its commit and
its ack, handlers that fail, payloads that are garbage.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec
import pytest
from typer.testing import CliRunner

from consumer_model import (
    TOPIC,
    CountMessage,
    FAST_RETRIES,
    Numbered,
    Tallied,
    Tally,
    effects,
    message,
    numbered,
    numbers_consumer,
    prepare,
    publish,
    registry,
    tally_app,
)
from support import POSTGRES_URL
from tidings.brokers.local import LocalBroker
from tidings.cli import app as cli
from tidings.messaging import Envelope, utc_now
from tidings.runtime import ANY, Consumer, DeadLetters, HandlerContext, Retries
from tidings.runtime.backoff import Backoff
from tidings.store import Store, open_store

TESTS = Path(__file__).parent


# -- helpers -------------------------------------------------------------------------------------


class Running:
    """A consumer running in a task of this test, stopped (and checked for a crash) on exit."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.stop = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(consumer.run(self.stop))

    async def until(self, check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
        """Wait until ``check()`` holds; fail with ``what`` after ``timeout`` seconds, or at once if the consumer crashed."""
        deadline = time.monotonic() + timeout
        while not await check():
            if self.task.done():
                self.task.result()
                pytest.fail(f"the consumer stopped before {what}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout} s waiting until {what} (stats: {self.consumer.stats})")
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(consumer: Consumer) -> AsyncIterator[Running]:
    run = Running(consumer)
    try:
        yield run
    finally:
        run.stop.set()
        await asyncio.wait_for(run.task, 30)


def local(store: Store) -> LocalBroker:
    return LocalBroker(store, poll_interval=0.02)


async def count(store: Store, sql: str, params: tuple[Any, ...] = ()) -> int:
    return int((await store.fetch(sql, params))[0][0])


async def all_acked(store: Store, group: str = "numbers") -> bool:
    """Whether the group's offset on the local log reached the last message (every delivery acked)."""
    last = await count(store, "SELECT coalesce(max(position), 0) FROM tidings_local_log WHERE topic = ?", (TOPIC,))
    done = await store.fetch("SELECT position FROM tidings_local_offsets WHERE group_name = ?", (group,))
    return bool(done) and int(done[0][0]) >= last


async def dead_letters(store: Store, *statuses: str) -> list[Any]:
    return await DeadLetters(store).list(consumer="numbers", statuses=statuses or ("dead", "held", "replay_requested"))


def store_url(store: Store) -> str:
    """A URL another process can open the same store with (PostgreSQL: in the same schema)."""
    if store.dialect == "postgresql":
        return f"{POSTGRES_URL}?options={quote(f'-c search_path={store.schema}')}"  # type: ignore[attr-defined]
    return store.url


def spawn_consumer(url: str, broker_url: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """``tidings consume consumer_model:build`` in a process of its own, as an operator would run it."""
    environment = {
        **os.environ,
        "TIDINGS_DATABASE_URL": url,
        "TIDINGS_BROKER_URL": broker_url,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "COLUMNS": "200",
        **env,
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tidings.cli", "consume", "consumer_model:build"], env=environment, stdout=out, stderr=out
        )


async def wait_for(check: Callable[[], Awaitable[bool]], what: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if process.poll() is not None:
            pytest.fail(f"the consumer process exited ({process.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}:\n{log.read_text()[-3000:]}")
        await asyncio.sleep(0.05)


# -- exactly once, in order ------------------------------------------------------------------------


async def test_each_message_is_applied_once_in_order_per_key_and_then_acked(store: Store) -> None:
    # Given 12 keys with 20 numbered messages each, interleaved on the local broker
    await prepare(store)
    broker = local(store)
    keys = [f"k{i}" for i in range(12)]
    await publish(broker, numbered(keys, 20))

    # When a consumer runs until every message is acked
    consumer = numbers_consumer(store, broker, concurrency=4, batch_size=25)
    async with running(consumer) as run:
        await run.until(lambda: all_acked(store), "every message is acked")

    # Then each key's messages were applied once each, in order, with one inbox row per message
    assert await effects(store) == {key: list(range(1, 21)) for key in keys}
    assert await count(store, "SELECT count(*) FROM tidings_inbox WHERE consumer = 'numbers'") == 240
    assert consumer.stats.applied == 240
    assert consumer.stats.dead == consumer.stats.held == 0


async def test_a_duplicate_delivery_is_applied_once(store: Store) -> None:
    # Given 30 messages applied and acked
    await prepare(store)
    broker = local(store)
    await publish(broker, numbered(["a", "b", "c"], 10))
    async with running(numbers_consumer(store, broker)) as run:
        await run.until(lambda: all_acked(store), "every message is acked")

    # When the broker delivers all of them again (the group's offset is rewound)
    await store.run("UPDATE tidings_local_offsets SET position = 0 WHERE group_name = 'numbers'")
    again = numbers_consumer(store, broker)
    async with running(again) as run:
        await run.until(lambda: all_acked(store), "the redeliveries are acked")

    # Then every redelivery was recognised by the inbox and nothing was applied twice
    assert again.stats.duplicates == 30
    assert again.stats.applied == 0
    assert await effects(store) == {key: list(range(1, 11)) for key in ("a", "b", "c")}


async def test_a_consumer_killed_between_commit_and_ack_has_its_redelivery_skipped(store: Store, tmp_path: Path) -> None:
    # Given 40 messages and a consumer process whose acks never complete
    await prepare(store)
    await publish(local(store), numbered(["a", "b", "c", "d"], 10))
    log = tmp_path / "consumer.log"
    doomed = spawn_consumer(store_url(store), "local:", log, STALL_ACKS="1")
    try:
        # When it has committed every message (and acked none) and is killed with SIGKILL
        await wait_for(lambda: _effect_count(store, 40), "the first process committed all 40", doomed, log)
        assert not await all_acked(store), "nothing should be acked yet"
    finally:
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)

    # Then a new process receives all 40 again, skips them by the inbox, and acks them
    deliveries = tmp_path / "deliveries.txt"
    survivor = spawn_consumer(store_url(store), "local:", log, DELIVERIES_LOG=str(deliveries))
    try:
        await wait_for(lambda: all_acked(store), "the redeliveries are acked", survivor, log)
    finally:
        survivor.terminate()
        survivor.wait(20)
    redelivered = deliveries.read_text().split()
    assert len(set(redelivered)) == 40, "the broker should have delivered every unacked message again"
    assert await effects(store) == {key: list(range(1, 11)) for key in "abcd"}
    assert await count(store, "SELECT count(*) FROM tidings_inbox") == 40


async def _effect_count(store: Store, expected: int) -> bool:
    return await count(store, "SELECT count(*) FROM consumer_effects") >= expected


async def test_an_old_version_is_upcast_to_the_version_the_handler_expects(store: Store) -> None:
    # Given a v1 message (its number called "seq") and a handler for Numbered v2
    await prepare(store)
    broker = local(store)
    await publish(broker, [message("old", 1, version=1), message("old", 2)])

    # When it is consumed
    async with running(numbers_consumer(store, broker)) as run:
        await run.until(lambda: all_acked(store), "both are acked")

    # Then the handler got it as v2
    assert await effects(store) == {"old": [1, 2]}


# -- failures ------------------------------------------------------------------------------------


async def test_a_poison_message_is_retried_then_dead_lettered_with_its_error_and_other_keys_continue(store: Store) -> None:
    # Given a handler that always fails on bad#2, and four keys with four messages each
    await prepare(store)
    await store.run("INSERT INTO consumer_failing (key, n) VALUES ('bad', 2)")
    broker = local(store)
    await publish(broker, numbered(["bad", "x", "y", "z"], 4))

    # When the consumer has settled every message
    consumer = numbers_consumer(store, broker)
    async with running(consumer) as run:
        await run.until(lambda: all_acked(store), "every message is settled and acked")

    # Then bad#2 is a dead letter with its error, traceback and attempts; bad#3 and #4 are held behind it
    rows = await dead_letters(store)
    assert [(r.key, json.loads(r.payload)["n"], r.status) for r in rows] == [("bad", 2, "dead"), ("bad", 3, "held"), ("bad", 4, "held")]
    dead = rows[0]
    assert dead.attempts == FAST_RETRIES.runs
    assert dead.reason == f"gave up after {FAST_RETRIES.runs} attempts"
    assert dead.error == "RuntimeError: bad #2 is poisoned"
    assert "Traceback" in dead.traceback and "poisoned" in dead.traceback
    assert dead.envelope is not None and dead.envelope["event_type"] == TOPIC
    # ...and every other key went through in full, the bad key up to its dead message
    assert await effects(store) == {"bad": [1], "x": [1, 2, 3, 4], "y": [1, 2, 3, 4], "z": [1, 2, 3, 4]}
    assert consumer.stats.dead == 1 and consumer.stats.held == 2


NOT_RETRYABLE = {
    "garbage JSON": (dict(payload=b"{this is not json"), "MalformedMessage"),
    "no envelope": (dict(headers={}), "MalformedMessage"),
    "unknown type": (dict(event_type="nobody.KnowsThis"), "UnknownMessageType"),
    "version from the future": (dict(version=99), "IncompatibleVersion"),
    "wrong field type": (dict(payload=b'{"key": "bad", "n": "three"}'), "MalformedMessage"),
    "wrong tenant": (dict(tenant="globex"), "WrongTenant"),
}


@pytest.mark.parametrize("kind", list(NOT_RETRYABLE))
async def test_a_message_no_retry_can_fix_goes_straight_to_the_dead_letters_with_the_reason(store: Store, kind: str) -> None:
    # Given one spoiled message and one good one
    await prepare(store)
    spoil, error_type = dict(NOT_RETRYABLE[kind][0]), NOT_RETRYABLE[kind][1]
    headers = spoil.pop("headers", None)
    bad = message("bad", 1, tenant=spoil.pop("tenant", "acme"), **spoil)  # type: ignore[arg-type]
    if headers is not None:
        bad = dataclasses.replace(bad, headers=headers)
    broker = local(store)
    await publish(broker, [bad, message("good", 1, tenant="acme")])
    runs: list[str] = []
    consumer = numbers_consumer(store, broker, tenant="acme")
    consumer.route(Numbered, _counting(runs))

    # When the consumer has settled both
    async with running(consumer) as run:
        await run.until(lambda: all_acked(store), "both are acked")

    # Then the spoiled one is dead at once, with the reason, and no handler ever ran for it
    [dead] = await dead_letters(store)
    assert dead.status == "dead"
    assert dead.reason == "not retryable"
    assert dead.error.startswith(f"{error_type}: "), dead.error
    assert dead.attempts == 0
    assert dead.payload == bad.payload
    assert runs == ["good"]
    assert await effects(store) == {"good": [1]}


def _counting(runs: list[str]) -> Callable[[Envelope, Any, Store], Awaitable[None]]:
    async def count_run(envelope: Envelope, event: Any, tx: Store) -> None:
        runs.append(event.key)

    return count_run


async def test_a_command_failing_validation_in_a_handler_is_dead_lettered_without_retries(store: Store) -> None:
    # Given a handler that runs a command the message makes invalid (amount 0)
    await prepare(store)
    broker = local(store)
    await publish(broker, [message("zero", 0), message("one", 1)])
    app = tally_app(store)
    runs: list[int] = []
    consumer = Consumer("numbers", store, broker, registry=registry(), retries=FAST_RETRIES)

    @consumer.handler(Numbered)
    async def count_it(event: Numbered, ctx: HandlerContext) -> None:
        runs.append(event.n)
        await ctx.handle(app, CountMessage(tally_id=event.key, amount=event.n))

    # When both are settled
    async with running(consumer) as run:
        await run.until(lambda: all_acked(store), "both are acked")

    # Then the invalid one ran once and is dead with the validation error; the valid one counted
    [dead] = await dead_letters(store)
    assert (dead.key, dead.reason, dead.attempts) == ("zero", "not retryable", 1)
    assert dead.error == "ValidationError: CountMessage.amount: must be positive"
    assert sorted(runs) == [0, 1]


async def test_a_parked_key_is_replayed_once_and_its_held_messages_follow_in_order(store: Store) -> None:
    # Given bad#2 dead-lettered with bad#3..#5 held behind it, while other keys completed
    await prepare(store)
    await store.run("INSERT INTO consumer_failing (key, n) VALUES ('bad', 2)")
    broker = local(store)
    await publish(broker, numbered(["bad", "ok"], 5))
    consumer = numbers_consumer(store, broker, replay_poll=0.1)
    async with running(consumer) as run:
        await run.until(lambda: all_acked(store), "every message is settled")
        assert await effects(store) == {"bad": [1], "ok": [1, 2, 3, 4, 5]}
        [head, *held] = await dead_letters(store)
        assert head.status == "dead" and [r.status for r in held] == ["held"] * 3

        # When the handler is fixed and the operator replays the dead letter
        await store.run("DELETE FROM consumer_failing")
        assert await DeadLetters(store).request_replay([head.id]) == 1
        await run.until(lambda: _has(store, "bad", 5), "bad#2..#5 are applied")

        # ...and a new message of the key arrives afterwards
        await publish(broker, [message("bad", 6)])
        await run.until(lambda: all_acked(store), "bad#6 is acked")

    # Then the head was applied once, then the held ones in order, then the new one; no row blocks the key
    assert (await effects(store))["bad"] == [1, 2, 3, 4, 5, 6]
    statuses = {r.id: r.status for r in await DeadLetters(store).list(consumer="numbers", statuses=("replayed",))}
    assert statuses == {head.id: "replayed", **{r.id: "replayed" for r in held}}
    assert await dead_letters(store) == []
    assert consumer.stats.replayed == 4

    # And when the whole log is delivered again, nothing is applied twice (the replayed ones included)
    await store.run("UPDATE tidings_local_offsets SET position = 0")
    again = numbers_consumer(store, broker)
    async with running(again) as run:
        await run.until(lambda: all_acked(store), "the redeliveries are acked")
    assert again.stats.duplicates == 11 and again.stats.applied == 0
    assert (await effects(store))["bad"] == [1, 2, 3, 4, 5, 6]


async def _has(store: Store, key: str, n: int) -> bool:
    return n in (await effects(store)).get(key, [])


async def test_a_replay_that_fails_again_leaves_the_key_parked_with_the_new_error(store: Store) -> None:
    # Given a dead letter whose handler is still broken
    await prepare(store)
    await store.run("INSERT INTO consumer_failing (key, n) VALUES ('bad', 1)")
    broker = local(store)
    await publish(broker, [message("bad", 1), message("bad", 2)])
    async with running(numbers_consumer(store, broker, replay_poll=0.1)) as run:
        await run.until(lambda: all_acked(store), "both are settled")
        [head, held] = await dead_letters(store)

        # When it is replayed
        await DeadLetters(store).request_replay([head.id])
        await run.until(lambda: _status_is(store, head.id, "dead"), "the replay has failed")

    # Then it is dead again with more attempts, and the held one still waits
    again = await DeadLetters(store).get(head.id)
    assert again is not None and again.reason == "failed again when replayed"
    assert again.attempts > head.attempts
    assert (await DeadLetters(store).get(held.id)).status == "held"  # type: ignore[union-attr]
    assert await effects(store) == {}


async def _status_is(store: Store, row_id: int, status: str) -> bool:
    row = await DeadLetters(store).get(row_id)
    return row is not None and row.status == status and row.reason == "failed again when replayed"


async def test_a_held_message_that_fails_on_release_becomes_the_new_dead_head(store: Store) -> None:
    # Given bad#1 dead and bad#2..#4 held, where bad#3 will fail too
    await prepare(store)
    await store.run("INSERT INTO consumer_failing (key, n) VALUES ('bad', 1)")
    broker = local(store)
    await publish(broker, numbered(["bad"], 4))
    async with running(numbers_consumer(store, broker, replay_poll=0.1)) as run:
        await run.until(lambda: all_acked(store), "all are settled")
        [head, *_] = await dead_letters(store)

        # When bad#1 is healed and replayed, but bad#3 is now broken
        await store.run("UPDATE consumer_failing SET n = 3")
        await DeadLetters(store).request_replay([head.id])
        await run.until(lambda: _has(store, "bad", 2), "bad#1 and bad#2 are applied")
        await run.until(lambda: _statuses_are(store, ["replayed", "replayed", "dead", "held"]), "bad#3 is dead")

    # Then the release stopped at bad#3, which says why, and bad#4 still waits behind it
    assert await effects(store) == {"bad": [1, 2]}
    rows = await DeadLetters(store).list(consumer="numbers", statuses=("dead",))
    assert [(json.loads(r.payload)["n"], r.reason) for r in rows] == [(3, "failed when released behind its key")]


async def _statuses_are(store: Store, expected: list[str]) -> bool:
    rows = await DeadLetters(store).list(consumer="numbers", statuses=("dead", "held", "replay_requested", "replayed", "purged"))
    return [r.status for r in rows] == expected


async def test_purging_a_dead_head_lets_its_held_messages_through_in_order(store: Store) -> None:
    # Given bad#1 dead with bad#2 and bad#3 held
    await prepare(store)
    await store.run("INSERT INTO consumer_failing (key, n) VALUES ('bad', 1)")
    broker = local(store)
    await publish(broker, numbered(["bad"], 3))
    async with running(numbers_consumer(store, broker, replay_poll=0.1)) as run:
        await run.until(lambda: all_acked(store), "all are settled")
        [head, *_] = await dead_letters(store)

        # When the operator purges the dead one
        assert await DeadLetters(store).purge([head.id]) == 1
        await run.until(lambda: _has(store, "bad", 3), "the held ones are applied")

    # Then the held ones were applied in order; the purged row is kept as purged
    assert await effects(store) == {"bad": [2, 3]}
    assert (await DeadLetters(store).get(head.id)).status == "purged"  # type: ignore[union-attr]


async def test_with_on_dead_skip_a_dead_keys_later_messages_go_through(store: Store) -> None:
    # Given a poisoned bad#1 and a consumer that skips instead of parking
    await prepare(store)
    await store.run("INSERT INTO consumer_failing (key, n) VALUES ('bad', 1)")
    broker = local(store)
    await publish(broker, numbered(["bad"], 3))

    # When everything is settled
    async with running(numbers_consumer(store, broker, on_dead="skip")) as run:
        await run.until(lambda: all_acked(store), "all are settled")

    # Then only bad#1 is dead and the later ones were applied
    assert [(r.status, json.loads(r.payload)["n"]) for r in await dead_letters(store)] == [("dead", 1)]
    assert await effects(store) == {"bad": [2, 3]}


async def test_a_dead_letter_is_also_copied_to_the_dead_letter_topic_on_the_broker(store: Store) -> None:
    # Given a consumer that copies dead letters to a topic of the broker, and a garbage message
    await prepare(store)
    broker = local(store)
    bad = message("bad", 1, payload=b"\x00garbage")
    await publish(broker, [bad])

    # When it is dead-lettered
    async with running(numbers_consumer(store, broker, dead_letter_topic="numbers.dead")) as run:
        await run.until(lambda: all_acked(store), "it is settled")
        await run.until(lambda: _copied(store), "the copy is on the broker")

    # Then the broker holds the message as received, with who gave up on it and why
    [(headers, payload)] = await store.fetch("SELECT headers, payload FROM tidings_local_log WHERE topic = 'numbers.dead'")
    headers = json.loads(headers)
    assert bytes(payload) == bad.payload
    assert headers["tidings-event_id"] == bad.event_id
    assert headers["tidings-dead-letter-consumer"] == "numbers"
    assert headers["tidings-dead-letter-error"].startswith("MalformedMessage")
    assert len(await dead_letters(store)) == 1


async def _copied(store: Store) -> bool:
    return await count(store, "SELECT count(*) FROM tidings_local_log WHERE topic = 'numbers.dead'") == 1


async def test_a_member_that_loses_its_shard_lock_stops_reading_before_another_takes_over(postgres_store_factory: Any) -> None:
    # Given member A reading the only shard and member B waiting, on PostgreSQL
    store = await postgres_store_factory()
    await prepare(store)
    broker = local(store)
    a = numbers_consumer(store, broker, member="a", rebalance_interval=0.1, handover_wait=0.0)
    b = numbers_consumer(store, broker, member="b", rebalance_interval=0.1, handover_wait=0.0)
    async with running(a) as run_a:
        await run_a.until(lambda: _true(a.subscribed), "A reads the shard")
        async with running(b) as run_b:
            # When A's lock connection is cut (its locks die with it) and B takes the shard
            [(backend,)] = await store.fetch(
                "SELECT backend_pid FROM tidings_consumer_members WHERE member_id = ?", (a.member_id,)
            )
            await store.fetch("SELECT pg_terminate_backend(?)", (backend,))
            await run_b.until(lambda: _true(b.subscribed), "B reads the shard")
            await run_a.until(lambda: _true(not a.subscribed), "A stopped reading")

            # Then what arrives now is applied by B alone
            await publish(broker, numbered(["k"], 5))
            await run_b.until(lambda: all_acked(store), "all are acked")
    rows = await store.fetch("SELECT DISTINCT member FROM consumer_effects")
    assert rows == [("b",)]
    assert await effects(store) == {"k": [1, 2, 3, 4, 5]}


async def _true(value: bool) -> bool:
    return value


# -- the handler's transaction --------------------------------------------------------------------


async def test_a_command_run_by_a_handler_commits_with_the_message_and_keeps_correlation_and_cause(store: Store) -> None:
    # Given a handler that counts each message on a tally, and fails once after its command ran
    await prepare(store)
    broker = local(store)
    sent = [message("t", n, correlation_id="flow-42") for n in (1, 2, 3)]
    await publish(broker, sent)
    app = tally_app(store)
    failed_once: list[int] = []
    consumer = Consumer("numbers", store, broker, registry=registry(), retries=FAST_RETRIES)

    @consumer.handler(Numbered)
    async def count_it(event: Numbered, ctx: HandlerContext) -> None:
        await ctx.handle(app, CountMessage(tally_id="tally-1"))
        if event.n == 2 and not failed_once:
            failed_once.append(event.n)
            raise RuntimeError("after the command")

    # When all three are settled
    async with running(consumer) as run:
        await run.until(lambda: all_acked(store), "all are acked")

    # Then the failed attempt left nothing behind: three messages, three counts
    tally = await app.load(Tally, "tally-1")
    assert tally.total == 3
    # ...and each count's event carries the message's correlation id; it is caused by its command,
    # and the command by the message (message → command → event)
    journal = [e for e in await store.read_correlation("flow-42") if e.event_type == Tallied.message_name]
    envelopes = [msgspec.json.decode(e.envelope) for e in journal]
    assert [env["command_causation_id"] for env in envelopes] == [m.event_id for m in sent]
    assert all(env["command_type"] == "CountMessage" for env in envelopes)
    assert len({env["causation_id"] for env in envelopes}) == 3
    assert not {env["causation_id"] for env in envelopes} & {m.event_id for m in sent}


async def test_routes_get_the_envelope_the_event_and_the_transaction(store: Store) -> None:
    # Given routes by class, by name (unregistered: plain data) and for ANY message
    await prepare(store)
    broker = local(store)
    await publish(broker, [message("k", 1), message("k", 2, event_type="other.Thing", payload=b'{"x": 1}')])
    seen: list[tuple[str, Any]] = []
    consumer = Consumer("numbers", store, broker, topics=[TOPIC], registry=registry())

    async def by_class(envelope: Envelope, event: Any, tx: Store) -> None:
        seen.append(("class", event.n))
        await tx.run(
            "INSERT INTO consumer_effects (consumer, key, n, event_id) VALUES (?, ?, ?, ?)",
            ("numbers", event.key, event.n, envelope.event_id),
        )

    async def by_name(envelope: Envelope, event: Any, tx: Store) -> None:
        seen.append(("name", event))

    async def every(envelope: Envelope, event: Any, tx: Store) -> None:
        seen.append(("any", envelope.event_type))

    consumer.route(Numbered, by_class)
    consumer.route("other.Thing", by_name)
    consumer.route(ANY, every)

    # When both are consumed
    async with running(consumer) as run:
        await run.until(lambda: all_acked(store), "both are acked")

    # Then each route got what it asked for, in registration order, and the write committed
    assert seen == [("class", 1), ("any", TOPIC), ("name", {"x": 1}), ("any", "other.Thing")]
    assert await effects(store) == {"k": [1]}


async def test_stopping_cancels_a_stuck_handler_after_the_shutdown_timeout_and_leaves_its_message_unacked(store: Store) -> None:
    # Given a consumer whose handler never returns
    await prepare(store)
    broker = local(store)
    await publish(broker, [message("k", 1)])
    started = asyncio.Event()
    consumer = Consumer("numbers", store, broker, registry=registry(), shutdown_timeout=0.3)

    @consumer.handler(Numbered)
    async def stuck(event: Numbered, ctx: HandlerContext) -> None:
        started.set()
        await asyncio.Event().wait()

    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(consumer.run(stop))
    await asyncio.wait_for(started.wait(), 20)

    # When it is told to stop
    stop.set()
    await asyncio.wait_for(task, 10)

    # Then it stopped (the handler cancelled, its transaction rolled back) and the message waits for the next run
    assert not await all_acked(store)
    assert await count(store, "SELECT count(*) FROM tidings_inbox") == 0


def test_a_handler_must_be_async() -> None:
    consumer = Consumer("numbers", registry=registry())
    with pytest.raises(TypeError, match="must be an async function"):
        consumer.handler(Numbered)(lambda event, ctx: None)  # type: ignore[arg-type,return-value]


# -- inbox retention -------------------------------------------------------------------------------


def test_an_inbox_retention_not_longer_than_the_retry_window_is_refused() -> None:
    retries = Retries(delayed=4, backoff=Backoff(1.0, 60.0))  # 1 + 2 + 4 + 8 = 15 s
    with pytest.raises(ValueError, match=r"inbox_retention of 10 s is not longer than the longest retry window \(15 s"):
        Consumer("numbers", retries=retries, inbox_retention=timedelta(seconds=10))


async def test_inbox_rows_older_than_the_retention_are_pruned_in_bounded_batches(store: Store) -> None:
    # Given 25 inbox rows from two days ago, 5 from now, and another consumer's old rows
    await prepare(store)
    old = utc_now() - timedelta(days=2)
    await store.run_many(
        "INSERT INTO tidings_inbox (consumer, event_id, processed_at) VALUES (?, ?, ?)",
        [("numbers", f"old-{i}", old) for i in range(25)] + [("others", f"old-{i}", old) for i in range(3)],
    )
    await store.run_many("INSERT INTO tidings_inbox (consumer, event_id) VALUES (?, ?)", [("numbers", f"new-{i}",) for i in range(5)])
    broker = local(store)
    await publish(broker, [message("k", 1)])

    # When a consumer with a one-day retention prunes, 10 rows per statement
    consumer = numbers_consumer(store, broker, inbox_retention=timedelta(days=1), prune_batch=10, prune_interval=0.1)
    async with running(consumer) as run:
        await run.until(
            lambda: _inbox_is(store, "numbers", 6), "only the fresh rows (and the new message's) are left"
        )

    # Then its old rows are gone, the fresh ones stay, and another consumer's rows are untouched
    left = {row[0] for row in await store.fetch("SELECT event_id FROM tidings_inbox WHERE consumer = 'numbers'")}
    assert {f"new-{i}" for i in range(5)} <= left and not any(e.startswith("old-") for e in left)
    assert await count(store, "SELECT count(*) FROM tidings_inbox WHERE consumer = 'others'") == 3


async def _inbox_is(store: Store, consumer: str, expected: int) -> bool:
    return await count(store, "SELECT count(*) FROM tidings_inbox WHERE consumer = ?", (consumer,)) == expected


# -- operators: tidings dlq ------------------------------------------------------------------------


def test_the_dlq_commands_list_show_replay_and_purge(tmp_path: Path) -> None:
    # Given a store with a dead letter (bad#1, garbage), one held behind it, and another dead one (worse#1)
    url = f"sqlite:///{tmp_path / 'dlq.db'}"
    asyncio.run(_two_dead_letters(url))
    runner = CliRunner()

    # When an operator lists them
    listed = runner.invoke(cli, ["dlq", "list", "--database", url], env={"COLUMNS": "220"})
    assert listed.exit_code == 0, listed.output
    assert "2 dead, 1 held" in listed.output
    assert "not retryable" in listed.output and "MalformedMessage" in listed.output

    # ...shows one
    ids = asyncio.run(_ids(url))
    shown = runner.invoke(cli, ["dlq", "show", str(ids["bad", 1]), "--database", url], env={"COLUMNS": "220"})
    assert shown.exit_code == 0, shown.output
    assert "dead letter" in shown.output and "this is not json" in shown.output and TOPIC in shown.output

    # ...tries to replay the held one (refused, with the head to replay instead), replays the head and purges the other
    refused = runner.invoke(cli, ["dlq", "replay", str(ids["bad", 2]), "--database", url])
    assert refused.exit_code == 1
    assert f"held behind dead letter {ids['bad', 1]}" in refused.output
    replayed = runner.invoke(cli, ["dlq", "replay", str(ids["bad", 1]), "--database", url])
    assert replayed.exit_code == 0 and "1 dead letter(s) marked replay_requested" in replayed.output
    purged = runner.invoke(cli, ["dlq", "purge", str(ids["worse", 1]), "--database", url])
    assert purged.exit_code == 0 and "1 dead letter(s) purged" in purged.output
    missing = runner.invoke(cli, ["dlq", "show", "9999", "--database", url])
    assert missing.exit_code == 1 and "there is no dead letter 9999" in missing.output

    # Then the statuses say so, and nothing was deleted
    assert asyncio.run(_statuses(url)) == {("bad", 1): "replay_requested", ("bad", 2): "held", ("worse", 1): "purged"}
    everything = runner.invoke(cli, ["dlq", "list", "--all", "--database", url], env={"COLUMNS": "220"})
    assert "purged" in everything.output and "replay_requested" in everything.output


async def _two_dead_letters(url: str) -> None:
    store = await open_store(url)
    try:
        await prepare(store)
        broker = local(store)
        await publish(broker, [message("bad", 1, payload=b"{this is not json"), message("bad", 2), message("worse", 1, version=99)])
        async with running(numbers_consumer(store, broker)) as run:
            await run.until(lambda: all_acked(store), "all are settled")
    finally:
        await store.close()


async def _rows(url: str) -> list[Any]:
    store = await open_store(url)
    try:
        return await DeadLetters(store).list(statuses=("dead", "held", "replay_requested", "replayed", "purged"))
    finally:
        await store.close()


async def _ids(url: str) -> dict[tuple[str, int], int]:
    return {(r.key, int(r.envelope["aggregate_version"])): r.id for r in await _rows(url)}


async def _statuses(url: str) -> dict[tuple[str, int], str]:
    return {(r.key, int(r.envelope["aggregate_version"])): r.status for r in await _rows(url)}


def test_consume_refuses_an_app_spec_that_is_not_a_consumer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'spec.db'}"
    result = CliRunner().invoke(cli, ["consume", "consumer_model:TOPIC", "--database", url, "--broker", "local:"])
    assert result.exit_code == 2
    assert "not a Consumer" in result.output


async def test_consumers_of_one_name_in_two_schemas_each_own_their_shards() -> None:
    # Given the same consumer in two schemas of one PostgreSQL database (two deployments side by side)
    # Advisory locks are database-wide; keyed by consumer and shard alone (the bug the fault
    # harness's relay finding pointed at), one schema's member held the other's shards for good.
    from support import require_service
    from tidings.runtime.shards import shard_ownership

    require_service("PostgreSQL", "127.0.0.1", 5432)
    schemas = [f"t_{os.urandom(6).hex()}" for _ in range(2)]
    stores = [await open_store(POSTGRES_URL, schema=schema, migrate=True) for schema in schemas]
    members = [shard_ownership(store, "numbers", f"member-{i}", 2) for i, store in enumerate(stores)]
    try:
        # When each takes its share
        plans = [await member.rebalance() for member in members]

        # Then each owns both shards of its own schema
        assert [plan.owned for plan in plans] == [frozenset({0, 1})] * 2
    finally:
        for member in members:
            await member.release()
        for store in stores:
            await store.drop_schema()  # type: ignore[attr-defined]
            await store.close()


async def test_an_oversized_message_is_dead_lettered_unread_with_the_reason(store: Store) -> None:
    # Given a message over the consumer's 256 KiB limit (that a broker with a larger limit carried) and a good one
    # Found by the fault harness's poison scenario: the consumer applied an oversized message as if it were fine.
    await prepare(store)
    broker = LocalBroker(store, max_message_bytes=1024 * 1024)
    big = message("big", 1, payload=msgspec.json.encode({"key": "big", "n": 1, "note": "x" * (300 * 1024)}))
    await publish(broker, [big, message("good", 1)])
    runs: list[str] = []
    consumer = numbers_consumer(store, broker)
    consumer.route(Numbered, _counting(runs))

    # When the consumer has settled both
    async with running(consumer) as run:
        await run.until(lambda: all_acked(store), "both are acked")

    # Then the oversized one is dead at once with the reason, and no handler ran for it
    [dead] = await dead_letters(store)
    assert (dead.status, dead.reason, dead.attempts) == ("dead", "not retryable", 0)
    assert dead.error.startswith("MessageTooLarge: test.Numbered encodes to "), dead.error
    assert runs == ["good"]
    assert await effects(store) == {"good": [1]}
