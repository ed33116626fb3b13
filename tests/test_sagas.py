"""Sagas on both stores: workflows, one transaction with the outbox, races, durable deadlines, compensation.

Failures are caused, not simulated: the consumer's transaction raises after the saga handled its
event, the outbox table disappears mid-save, two runners race on one instance through separate
connections, and the scheduler process is killed with SIGKILL before its deadline is due.
The given/when/then tests at the end run the same decisions in memory, with no store.
"""

from __future__ import annotations

import asyncio
import time
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec
import pytest

from saga_model import (
    SAGAS,
    Asset,
    AssetIndexed,
    AssetProcessing,
    AssetProcessingStalled,
    AssetReadyForSearch,
    AssetUploaded,
    Counted,
    ExtractMetadata,
    MetadataExtracted,
    OrderFulfilled,
    OrderFulfilment,
    OrderPlaced,
    OrderRejected,
    OneRefund,
    OrderShipped,
    PaymentCaptured,
    PaymentFailed,
    PaymentOverdue,
    ProcessingOverdue,
    RefundPayment,
    RefundRequested,
    ReleaseStock,
    ReserveStock,
    ShipmentFailed,
    ShipOrder,
    StockReserved,
    Tally,
    UploadAsset,
    make_assets_app,
)
from support import POSTGRES_URL, StoreFactory
from tidings import Application, Command, DomainEvent, IntegrationEvent, MessageContext
from tidings.messaging import Envelope, new_id, utc_now
from tidings.runtime.backoff import Backoff
from tidings.runtime.sagas import Deadline, Saga, SagaOutcome, SagaRunner, list_archived, list_sagas, on, starts
from tidings.runtime.scheduler import DeadlineRow, Scheduler, due_deadlines, list_deadlines
from tidings.store import Store
from tidings.testing.sagas import saga_scenario

TESTS = Path(__file__).resolve().parent

# -- helpers -------------------------------------------------------------------------------------


def envelope_for(message: Any, correlation_id: str = "flow-1") -> Envelope:
    """The envelope a consumer would hand the runner for ``message``."""
    return Envelope(
        event_id=new_id(),
        event_type=message.message_name,
        schema_version=message.message_version,
        occurred_at=utc_now(),
        correlation_id=correlation_id,
        source="test",
    )


async def deliver(runner: SagaRunner, *messages: Any) -> list[SagaOutcome]:
    """Each message in a transaction of its own, as a consumer would; the outcomes of the last one."""
    outcomes: list[SagaOutcome] = []
    for message in messages:
        outcomes = await runner.dispatch(envelope_for(message), message)
    return outcomes


async def outbox(store: Store) -> list[tuple[str, str, dict[str, Any]]]:
    """(topic, message type, payload) of every outbox row, oldest first."""
    return [(row.topic, row.event_type, msgspec.json.decode(row.payload)) for row in await store.read_outbox(10_000)]


async def count(store: Store, table: str) -> int:
    return int((await store.fetch(f"SELECT count(*) FROM {table}"))[0][0])


def store_url(store: Store) -> str:
    """A URL another process can open the same store with (PostgreSQL: in the same schema)."""
    if store.dialect == "postgresql":
        return f"{POSTGRES_URL}?options={quote(f'-c search_path={store.schema}')}"  # type: ignore[attr-defined]
    return store.url


async def pump(store: Store, runner: SagaRunner, app: Application, seen: set[int]) -> None:
    """Play the consumers until the outbox has nothing new: commands to the assets app, events to the sagas."""
    while True:
        rows = [row for row in await store.read_outbox(10_000) if row.id not in seen]
        if not rows:
            return
        for row in rows:
            seen.add(row.id)
            envelope = msgspec.json.decode(row.envelope, type=Envelope)
            if row.topic == "assets.commands":
                command = app.registry.decode(row.event_type, envelope.schema_version, row.payload)
                context = MessageContext(correlation_id=envelope.correlation_id, causation_id=envelope.event_id)
                await app.handle(command, context=context)  # type: ignore[arg-type]
            elif row.event_type in runner.registry:
                event = runner.registry.decode(row.event_type, envelope.schema_version, row.payload)
                await runner.dispatch(envelope, event)


# -- a workflow, end to end ----------------------------------------------------------------------


async def test_an_asset_saga_follows_the_workflow_to_completion_and_is_archived(store: Store) -> None:
    # Given the assets context and the AssetProcessing saga, wired through the outbox
    app = make_assets_app(store)
    runner = SagaRunner(store, SAGAS)
    seen: set[int] = set()

    # When an asset is uploaded and every message is consumed until nothing new appears
    result = await app.handle(UploadAsset(asset_id="a-1", title="Dunes"))
    await pump(store, runner, app, seen)

    # Then the saga asked for metadata, then for indexing, and announced the asset as searchable
    rows = await outbox(store)
    assert [(topic, kind) for topic, kind, _ in rows] == [
        ("assets.AssetUploaded", "assets.AssetUploaded"),
        ("assets.commands", "ExtractMetadata"),
        ("assets.MetadataExtracted", "assets.MetadataExtracted"),
        ("assets.commands", "IndexAsset"),
        ("assets.AssetIndexed", "assets.AssetIndexed"),
        ("assets.AssetReadyForSearch", "assets.AssetReadyForSearch"),
    ]
    assert rows[-1][2] == {"asset_id": "a-1", "title": "Dunes", "width": 1600, "height": 900, "format": "jpeg"}
    assert (await app.load(Asset, "a-1")).indexed is True
    # and every message of the flow carries the upload's correlation id
    envelopes = [msgspec.json.decode(row.envelope) for row in await store.read_outbox()]
    assert {envelope["correlation_id"] for envelope in envelopes} == {result.correlation_id}
    # and each command the saga sent names the event it reacted to as its cause
    assert envelopes[1]["causation_id"] == envelopes[0]["event_id"]  # ExtractMetadata <- AssetUploaded
    assert envelopes[3]["causation_id"] == envelopes[2]["event_id"]  # IndexAsset <- MetadataExtracted

    # and the finished saga moved to the archive with its final state and what it handled
    assert await list_sagas(store) == []
    [archived] = await list_archived(store)
    assert (archived.saga_type, archived.key, archived.outcome, archived.version) == ("AssetProcessing", "a-1", "completed", 3)
    assert archived.state["status"] == "complete" and archived.state["width"] == 1600
    assert [entry["message"] for entry in archived.history] == [
        "assets.AssetUploaded", "assets.MetadataExtracted", "assets.AssetIndexed",
    ]  # fmt: skip
    # and its stall deadline was cancelled with it
    [deadline] = await list_deadlines(store, open_only=False)
    assert deadline.status == "cancelled" and deadline.cancel_reason == "saga completed"


# -- one transaction -----------------------------------------------------------------------------


async def test_saga_state_commands_and_deadlines_commit_together_or_not_at_all(store: Store) -> None:
    # Given a runner plugged into a consumer the way the consumer runtime does it
    runner = SagaRunner(store, SAGAS)
    handle = runner.routes()[AssetUploaded]
    uploaded = AssetUploaded(asset_id="a-2", title="Reef")

    # When the consumer's transaction fails after the saga handled the event (its inbox write, say)
    with pytest.raises(RuntimeError, match="inbox write failed"):
        async with store.transaction() as tx:
            await handle(envelope_for(uploaded), uploaded, tx)
            assert await count(tx, "tidings_sagas") == 1  # written, inside the transaction
            raise RuntimeError("inbox write failed")

    # Then neither the saga, nor its command, nor its deadline exists
    assert (await count(store, "tidings_sagas"), await count(store, "tidings_outbox")) == (0, 0)
    assert await count(store, "tidings_saga_deadlines") == 0

    # When the redelivered event is handled and the transaction commits
    async with store.transaction() as tx:
        await handle(envelope_for(uploaded), uploaded, tx)

    # Then all three are there
    assert [saga.key for saga in await list_sagas(store)] == ["a-2"]
    assert [(topic, kind) for topic, kind, _ in await outbox(store)] == [("assets.commands", "ExtractMetadata")]
    assert [d.message_type for d in await list_deadlines(store)] == ["assets.ProcessingOverdue"]


async def test_an_outbox_write_failing_after_the_saga_row_was_written_rolls_the_saga_back(store: Store) -> None:
    # Given a running saga at version 1
    runner = SagaRunner(store, SAGAS)
    await deliver(runner, AssetUploaded(asset_id="a-3", title="Glacier"))
    extracted = MetadataExtracted(asset_id="a-3", width=10, height=20, format="png")

    # When the outbox table is gone while the next step saves (the saga row is updated first)
    await store.run("ALTER TABLE tidings_outbox RENAME TO tidings_outbox_away")
    try:
        with pytest.raises(Exception, match="tidings_outbox"):
            await deliver(runner, extracted)
    finally:
        await store.run("ALTER TABLE tidings_outbox_away RENAME TO tidings_outbox")

    # Then the saga is as it was: the state update went with the failed outbox write
    [saga] = await list_sagas(store)
    assert (saga.version, saga.state["status"], saga.state["width"]) == (1, "awaiting metadata", 0)
    assert [kind for _, kind, _ in await outbox(store)] == ["ExtractMetadata"]

    # and handling it again works
    await deliver(runner, extracted)
    [saga] = await list_sagas(store)
    assert (saga.version, saga.state["status"]) == (2, "awaiting index")
    assert [kind for _, kind, _ in await outbox(store)] == ["ExtractMetadata", "IndexAsset"]


# -- races ---------------------------------------------------------------------------------------


class PausingTransaction:
    """The store as a runner sees it, except that its first saga load waits until the other racer has loaded too."""

    def __init__(self, store: Store, loaded: asyncio.Event, other_loaded: asyncio.Event) -> None:
        self._store = store
        self._loaded = loaded
        self._other_loaded = other_loaded
        self._paused = False

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PausingTransaction]:
        async with self._store.transaction():
            yield self

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        rows = await self._store.fetch(sql, params)
        if "FROM tidings_sagas WHERE" in sql and not self._paused:
            self._paused = True
            self._loaded.set()
            try:
                # On SQLite the other racer cannot load while we hold the write lock: stop waiting.
                await asyncio.wait_for(self._other_loaded.wait(), 1.0)
            except TimeoutError:
                pass
        return rows

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def test_racing_updates_of_one_saga_instance_lose_nothing(store_factory: StoreFactory) -> None:
    # Given a tally at version 1 and two runners on separate connections (as two consumer processes)
    store_a, store_b = await store_factory(), await store_factory()
    runner_a, runner_b = SagaRunner(store_a, [Tally]), SagaRunner(store_b, [Tally])
    await deliver(runner_a, Counted(tally_id="t", n=1))
    a_loaded, b_loaded = asyncio.Event(), asyncio.Event()

    async def racer(runner: SagaRunner, store: Store, n: int, mine: asyncio.Event, other: asyncio.Event) -> None:
        tx = PausingTransaction(store, mine, other)
        event = Counted(tally_id="t", n=n)
        async with tx.transaction():  # the consumer's inbox transaction
            await runner.handle(tx, envelope_for(event), event)  # type: ignore[arg-type]

    # When both load version 1 before either saves, and then both save
    await asyncio.gather(racer(runner_a, store_a, 10, a_loaded, b_loaded), racer(runner_b, store_b, 100, b_loaded, a_loaded))

    # Then both updates are in: nothing was overwritten
    [tally] = await list_sagas(store_a)
    assert (tally.version, tally.state["total"], sorted(tally.state["seen"])) == (3, 111, [1, 10, 100])
    if store_a.dialect == "postgresql":
        # one won; the other's UPDATE ... WHERE version = 1 matched nothing, so it reloaded and retried once
        assert runner_a.conflicts + runner_b.conflicts == 1
    else:
        # SQLite's write lock made the second transaction wait for the first: nothing to retry
        assert runner_a.conflicts + runner_b.conflicts == 0


async def test_many_concurrent_updates_of_one_saga_instance_lose_nothing(store_factory: StoreFactory) -> None:
    # Given two runners on separate connections
    store_a, store_b = await store_factory(), await store_factory()
    runner_a = SagaRunner(store_a, [Tally], retries=100)
    runner_b = SagaRunner(store_b, [Tally], retries=100)

    # When 20 numbers are counted at once on one tally, half through each runner
    numbers = list(range(1, 21))
    await asyncio.gather(*(deliver(runner_a if n % 2 else runner_b, Counted(tally_id="t", n=n)) for n in numbers))

    # Then every number is counted once
    [tally] = await list_sagas(store_a)
    assert (tally.version, tally.state["total"], sorted(tally.state["seen"])) == (20, sum(numbers), numbers)


class PausingAfterArchiveCheck(PausingTransaction):
    """A racer whose check of the archive waits until the other racer has checked it too (or cannot)."""

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        rows = await self._store.fetch(sql, params)
        if "FROM tidings_saga_archive" in sql and not self._paused:
            self._paused = True
            self._loaded.set()
            try:
                # Behind the other racer's lock (or SQLite's write lock) we cannot get here: stop waiting.
                await asyncio.wait_for(self._other_loaded.wait(), 1.0)
            except TimeoutError:
                pass
        return rows


async def test_two_starts_of_a_saga_that_finishes_in_one_turn_run_it_once(store_factory: StoreFactory) -> None:
    # Given a saga that starts and completes in one turn, and two runners on separate connections
    store_a, store_b = await store_factory(), await store_factory()
    runner_a, runner_b = SagaRunner(store_a, [OneRefund]), SagaRunner(store_b, [OneRefund])
    a_checked, b_checked = asyncio.Event(), asyncio.Event()

    async def racer(runner: SagaRunner, store: Store, channel: str, mine: asyncio.Event, other: asyncio.Event) -> SagaOutcome:
        tx = PausingAfterArchiveCheck(store, mine, other)
        event = RefundRequested(order_id="o-1", channel=channel)
        async with tx.transaction():  # each consumer's inbox transaction
            [outcome] = await runner.handle(tx, envelope_for(event), event)  # type: ignore[arg-type]
        return outcome

    # When two start messages for one order arrive at once (on different partition keys, so two
    # consumers handle them in parallel) and both look for an archived instance before either saves
    outcomes = await asyncio.gather(
        racer(runner_a, store_a, "web", a_checked, b_checked), racer(runner_b, store_b, "support", b_checked, a_checked)
    )

    # Then one ran it and the other saw it finished: one archived instance, one refund sent
    assert sorted((o.status, o.reason) for o in outcomes) == [("completed", None), ("ignored", "this instance finished before")]
    assert await count(store_a, "tidings_saga_archive") == 1
    assert [event_type for _, event_type, _ in await outbox(store_a)] == ["refunds.RefundIssued"]
    assert await list_sagas(store_a) == []


# -- deadlines -----------------------------------------------------------------------------------


def spawn_scheduler(url: str, log: Path) -> subprocess.Popen[bytes]:
    """A scheduler in a process of its own, as an operator would run it."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
        "COLUMNS": "200",
    }
    command = [sys.executable, "-m", "tidings.cli", "scheduler", "--database", url, "--app", "saga_model:SAGAS", "--poll-interval", "0.1"]
    with log.open("ab") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=out)


async def wait_for_text(log: Path, text: str, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while text not in (log.read_text() if log.exists() else ""):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{text!r} did not appear in {log} within {timeout} s:\n{log.read_text() if log.exists() else ''}")
        await asyncio.sleep(0.05)


async def test_a_deadline_fires_exactly_once_after_the_scheduler_was_killed_and_restarted(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a scheduler process running
    monkeypatch.setattr(AssetProcessing, "stall_after", timedelta(seconds=2))
    url = store_url(store)
    first = spawn_scheduler(url, tmp_path / "first.log")
    restarted: list[subprocess.Popen[bytes]] = []
    try:
        await wait_for_text(tmp_path / "first.log", "scheduler: running")
        # and an asset whose saga is stalled if not ready within 2 seconds
        runner = SagaRunner(store, SAGAS)
        await deliver(runner, AssetUploaded(asset_id="a-9", title="Storm"))
        [deadline] = await list_deadlines(store)

        # When the scheduler is killed with SIGKILL before the deadline is due
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
        # and the due time passes with no scheduler running
        await asyncio.sleep(max(0.0, (deadline.due_at - utc_now()).total_seconds()) + 0.5)
        [still] = await list_deadlines(store)
        assert still.status == "pending"

        # When two schedulers start again
        for n in range(2):
            restarted.append(spawn_scheduler(url, tmp_path / f"restarted-{n}.log"))
        for _ in range(300):
            [row] = await list_deadlines(store, open_only=False)
            if row.status == "fired":
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # give a second firing every chance to happen

        # Then they stop cleanly on SIGTERM
        for process in restarted:
            process.send_signal(signal.SIGTERM)
        assert [process.wait(15) for process in restarted] == [0, 0]
    finally:
        for process in (first, *restarted):
            if process.poll() is None:
                process.kill()
                process.wait()

    # And the deadline fired exactly once: marked fired, handled once, one stalled event published
    [row] = await list_deadlines(store, open_only=False)
    assert row.status == "fired" and row.attempts == 0
    [saga] = await list_sagas(store)
    assert (saga.version, saga.state["status"]) == (2, "stalled")
    assert [entry["message"] for entry in saga.history] == ["assets.AssetUploaded", "assets.ProcessingOverdue"]
    stalled = [payload for _, kind, payload in await outbox(store) if kind == "assets.AssetProcessingStalled"]
    assert stalled == [{"asset_id": "a-9", "status": "awaiting metadata"}]


async def test_two_schedulers_racing_for_the_same_due_deadlines_fire_each_once(store_factory: StoreFactory) -> None:
    # Given 12 assets past their stall deadline, and two schedulers on separate connections
    store_a, store_b = await store_factory(), await store_factory()
    runner_a, runner_b = SagaRunner(store_a, SAGAS), SagaRunner(store_b, SAGAS)
    await deliver(runner_a, *(AssetUploaded(asset_id=f"a-{n}", title="Late") for n in range(12)))
    later = utc_now() + timedelta(hours=1)

    # When both read the same due rows, then fire them at the same time
    due_a, due_b = await due_deadlines(store_a, later, 100), await due_deadlines(store_b, later, 100)
    assert len(due_a) == len(due_b) == 12

    async def fire_all(runner: SagaRunner, rows: list[DeadlineRow]) -> int:
        return sum([await runner.fire(row, now=later) is not None for row in rows])

    fired = await asyncio.gather(fire_all(runner_a, due_a), fire_all(runner_b, due_b))

    # Then every deadline fired once between them: one stalled event per asset
    assert sum(fired) == 12
    stalled = sorted(payload["asset_id"] for _, kind, payload in await outbox(store_a) if kind == "assets.AssetProcessingStalled")
    assert stalled == sorted(f"a-{n}" for n in range(12))
    assert {saga.version for saga in await list_sagas(store_a)} == {2}


async def test_a_deadline_is_cancelled_when_the_saga_completes_and_never_fires(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a scheduler running in this process and assets that stall after 1.5 seconds
    monkeypatch.setattr(AssetProcessing, "stall_after", timedelta(seconds=1.5))
    runner = SagaRunner(store, SAGAS)
    scheduler = Scheduler(runner, poll_interval=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    try:
        # When one asset completes in time and another does not
        await deliver(
            runner,
            AssetUploaded(asset_id="done", title="Fast"),
            AssetUploaded(asset_id="slow", title="Slow"),
            MetadataExtracted(asset_id="done", width=1, height=1, format="gif"),
            AssetIndexed(asset_id="done"),
        )
        # Both deadlines fall due together (the completed asset's a moment earlier) and one query
        # picks every due deadline: once the slow one fired, the done one would have fired with it.
        waited_until = time.monotonic() + 15
        while scheduler.fired < 1 and time.monotonic() < waited_until:
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task

    # Then only the unfinished asset's deadline fired
    assert scheduler.fired == 1
    stalled = [payload["asset_id"] for _, kind, payload in await outbox(store) if kind == "assets.AssetProcessingStalled"]
    assert stalled == ["slow"]
    by_key = {row.saga_key: row for row in await list_deadlines(store, open_only=False)}
    assert (by_key["done"].status, by_key["done"].cancel_reason) == ("cancelled", "saga completed")
    assert by_key["slow"].status == "fired"


async def test_a_deadline_cancelled_explicitly_by_a_later_step_never_fires(store: Store) -> None:
    # Given two orders whose stock was reserved, each with a payment deadline; one is then paid
    runner = SagaRunner(store, SAGAS)
    await deliver(
        runner,
        OrderPlaced(order_id="paid", sku="mug", quantity=2, amount_cents=1800),
        StockReserved(order_id="paid", reservation_id="r-1"),
        OrderPlaced(order_id="unpaid", sku="cap", quantity=1, amount_cents=900),
        StockReserved(order_id="unpaid", reservation_id="r-2"),
        PaymentCaptured(order_id="paid", payment_id="p-1"),
    )

    # When the scheduler runs an hour later
    fired = await Scheduler(runner).fire_due(now=utc_now() + timedelta(hours=1))

    # Then only the unpaid order's deadline fired; the paid order's was cancelled by its payment step
    assert fired == 1
    by_key = {row.saga_key: row for row in await list_deadlines(store, open_only=False)}
    assert (by_key["paid"].status, by_key["paid"].cancel_reason) == ("cancelled", "cancelled by payment_captured")
    assert by_key["unpaid"].status == "fired"
    [running] = await list_sagas(store)
    assert (running.key, running.state["status"]) == ("paid", "shipping")
    # and the overdue order compensated its reservation and was rejected
    [archived] = await list_archived(store)
    assert (archived.key, archived.outcome, archived.reason) == ("unpaid", "compensated", "payment overdue")
    tail = [(topic, kind, payload) for topic, kind, payload in await outbox(store)][-2:]
    assert tail == [
        ("inventory.commands", "ReleaseStock", {"reservation_id": "r-2"}),
        ("orders.OrderRejected", "orders.OrderRejected", {"order_id": "unpaid", "why": "payment overdue"}),
    ]


class _AlarmSet(IntegrationEvent, name="test.AlarmSet"):
    alarm_id: str


class _Ring(DomainEvent, name="test.Ring"):
    alarm_id: str


class _BrokenBell(Saga, context="test"):
    @starts(_AlarmSet, key=lambda e: e.alarm_id)
    def alarm_set(self, event: _AlarmSet) -> None:
        self.schedule(timedelta(minutes=1), _Ring(alarm_id=event.alarm_id))

    @on(_Ring)
    def ring(self, deadline: _Ring) -> None:
        raise RuntimeError("the bell is broken")


async def test_a_deadline_whose_handler_fails_is_retried_then_parked_without_holding_up_others(store: Store) -> None:
    # Given a deadline whose handler always fails, and a healthy one due at the same time
    runner = SagaRunner(store, [*SAGAS, _BrokenBell])
    await deliver(runner, _AlarmSet(alarm_id="bell"), AssetUploaded(asset_id="a-7", title="Fine"))
    scheduler = Scheduler(runner, max_attempts=2, backoff=Backoff(0.01, 0.01))

    # When the scheduler fires what is due
    fired = await scheduler.fire_due(now=utc_now() + timedelta(hours=1))

    # Then the healthy one fired, and the failing one waits for a retry with its error, its saga untouched
    assert fired == 1
    by_type = {row.saga_type: row for row in await list_deadlines(store, open_only=False)}
    assert by_type["AssetProcessing"].status == "fired"
    failing = by_type["_BrokenBell"]
    assert (failing.status, failing.attempts, failing.last_error) == ("retrying", 1, "RuntimeError: the bell is broken")
    assert {saga.saga_type: saga.version for saga in await list_sagas(store)}["_BrokenBell"] == 1

    # When it fails again: it is parked after max_attempts, and no longer due
    assert await scheduler.fire_due(now=utc_now() + timedelta(hours=2)) == 0
    [parked] = [row for row in await list_deadlines(store, open_only=False) if row.saga_type == "_BrokenBell"]
    assert (parked.status, parked.attempts) == ("parked", 2)
    assert await scheduler.fire_due(now=utc_now() + timedelta(hours=3)) == 0


# -- compensation --------------------------------------------------------------------------------


async def test_a_failure_event_runs_the_compensations_of_the_steps_done_newest_first(store: Store) -> None:
    # Given an order whose stock was reserved and payment captured
    runner = SagaRunner(store, SAGAS)
    await deliver(
        runner,
        OrderPlaced(order_id="o-1", sku="mug", quantity=2, amount_cents=1800),
        StockReserved(order_id="o-1", reservation_id="r-1"),
        PaymentCaptured(order_id="o-1", payment_id="p-1"),
    )
    before = len(await store.read_outbox())

    # When shipping fails
    [outcome] = await deliver(runner, ShipmentFailed(order_id="o-1", why="address unknown"))

    # Then the payment is refunded and the stock released (newest step first), and the order rejected
    assert outcome.status == "compensated" and outcome.compensated == ["payment_captured", "stock_reserved"]
    assert (await outbox(store))[before:] == [
        ("payments.commands", "RefundPayment", {"payment_id": "p-1", "amount_cents": 1800}),
        ("inventory.commands", "ReleaseStock", {"reservation_id": "r-1"}),
        ("orders.OrderRejected", "orders.OrderRejected", {"order_id": "o-1", "why": "shipment failed: address unknown"}),
    ]
    # and the saga is archived as compensated, with the reason
    assert await list_sagas(store) == []
    [archived] = await list_archived(store)
    assert (archived.outcome, archived.reason) == ("compensated", "shipment failed: address unknown")


async def test_a_failure_before_a_step_ran_does_not_compensate_that_step(store: Store) -> None:
    # Given an order whose stock was reserved but not yet paid
    runner = SagaRunner(store, SAGAS)
    await deliver(
        runner,
        OrderPlaced(order_id="o-2", sku="cap", quantity=1, amount_cents=900),
        StockReserved(order_id="o-2", reservation_id="r-2"),
    )
    before = len(await store.read_outbox())

    # When the payment fails (a step declared with compensate=True)
    [outcome] = await deliver(runner, PaymentFailed(order_id="o-2", why="card declined"))

    # Then only the reservation is released: no refund for a payment that never happened
    assert outcome.compensated == ["stock_reserved"]
    assert [kind for _, kind, _ in (await outbox(store))[before:]] == ["ReleaseStock", "orders.OrderRejected"]
    [archived] = await list_archived(store)
    assert (archived.outcome, archived.reason) == ("compensated", "payments.PaymentFailed")
    # and its payment deadline was cancelled with the saga
    [deadline] = await list_deadlines(store, open_only=False)
    assert deadline.status == "cancelled"


# -- what is not for a saga ----------------------------------------------------------------------


async def test_an_event_for_no_running_instance_is_ignored_with_a_debug_log(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    # Given no saga running for asset "nobody"
    runner = SagaRunner(store, SAGAS)

    # When an event that does not start a saga arrives for it
    with caplog.at_level(logging.DEBUG, logger="tidings.sagas"):
        [outcome] = await deliver(runner, AssetIndexed(asset_id="nobody"))

    # Then it is ignored, logged at debug level, and nothing is written
    assert outcome.status == "ignored"
    assert [r.levelno for r in caplog.records if "nobody" in r.getMessage()] == [logging.DEBUG]
    assert (await count(store, "tidings_sagas"), await count(store, "tidings_outbox")) == (0, 0)


async def test_a_start_event_for_a_finished_saga_does_not_start_it_again(store: Store) -> None:
    # Given an asset whose saga completed
    runner = SagaRunner(store, SAGAS)
    await deliver(
        runner,
        AssetUploaded(asset_id="a-5", title="Once"),
        MetadataExtracted(asset_id="a-5", width=1, height=1, format="gif"),
        AssetIndexed(asset_id="a-5"),
    )
    sent = len(await store.read_outbox())

    # When its start event arrives again (replayed from a dead-letter table, say)
    [outcome] = await deliver(runner, AssetUploaded(asset_id="a-5", title="Once"))

    # Then it is ignored: no new instance, no new command
    assert (outcome.status, outcome.reason) == ("ignored", "this instance finished before")
    assert await list_sagas(store) == []
    assert len(await store.read_outbox()) == sent


# -- declaring a saga ----------------------------------------------------------------------------


class _Ping(IntegrationEvent, name="test.Ping"):
    ping_id: str


class _Later(IntegrationEvent, name="test.Later"):
    ping_id: str


def test_an_async_saga_handler_is_refused_when_the_class_is_defined() -> None:
    with pytest.raises(TypeError, match="is async; saga handlers are plain functions"):

        class _AsyncSaga(Saga):
            @starts(_Ping, key=lambda e: e.ping_id)
            async def pinged(self, event: _Ping) -> None:
                pass


def test_two_steps_for_one_message_type_are_refused() -> None:
    with pytest.raises(TypeError, match="handled by both first and second"):

        class _Twice(Saga):
            @starts(_Ping, key=lambda e: e.ping_id)
            def first(self, event: _Ping) -> None:
                pass

            @on(_Ping, key=lambda e: e.ping_id)
            def second(self, event: _Ping) -> None:
                pass


def test_scheduling_a_message_the_saga_cannot_receive_is_an_error() -> None:
    class _Forgetful(Saga):
        @starts(_Ping, key=lambda e: e.ping_id)
        def pinged(self, event: _Ping) -> None:
            self.schedule(timedelta(minutes=1), _Later(ping_id=event.ping_id))

    saga_scenario(_Forgetful).when(_Ping(ping_id="p")).then_raises(TypeError, match=r"add a method decorated with @on\(_Later\)")


# -- given / when / then -------------------------------------------------------------------------


def test_an_upload_asks_for_metadata_and_sets_the_stall_deadline() -> None:
    saga_scenario(AssetProcessing).when(AssetUploaded(asset_id="a-1", title="Dunes")).then_sends(
        ExtractMetadata(asset_id="a-1")
    ).then_schedules(Deadline(timedelta(minutes=30), ProcessingOverdue(asset_id="a-1"))).then_publishes().then_state(
        status="awaiting metadata", title="Dunes"
    ).then_running()


def test_indexing_completes_the_asset_saga_and_announces_the_asset() -> None:
    saga_scenario(AssetProcessing).given(
        AssetUploaded(asset_id="a-1", title="Dunes"),
        MetadataExtracted(asset_id="a-1", width=800, height=600, format="jpeg"),
    ).when(AssetIndexed(asset_id="a-1")).then_publishes(
        AssetReadyForSearch(asset_id="a-1", title="Dunes", width=800, height=600, format="jpeg")
    ).then_sends().then_completed()


def test_the_stall_deadline_fires_when_due_and_the_saga_keeps_waiting() -> None:
    outcome = (
        saga_scenario(AssetProcessing)
        .given(AssetUploaded(asset_id="a-1", title="Dunes"), MetadataExtracted(asset_id="a-1", width=8, height=6, format="png"))
        .when_due(ProcessingOverdue)
        .then_publishes(AssetProcessingStalled(asset_id="a-1", status="awaiting index"))
        .then_running()
        .then_state(status="stalled")
    )
    assert outcome.pending == []  # the deadline fired: nothing is left pending


def test_a_payment_cancels_the_payment_deadline() -> None:
    outcome = (
        saga_scenario(OrderFulfilment)
        .given(OrderPlaced(order_id="o-1", sku="mug", quantity=2, amount_cents=1800), StockReserved(order_id="o-1", reservation_id="r-1"))
        .when(PaymentCaptured(order_id="o-1", payment_id="p-1"))
        .then_sends(ShipOrder(order_id="o-1"))
        .then_cancels(PaymentOverdue)
    )
    assert outcome.pending == []


def test_a_late_payment_compensates_the_reservation() -> None:
    saga_scenario(OrderFulfilment).given(
        OrderPlaced(order_id="o-1", sku="mug", quantity=2, amount_cents=1800),
        StockReserved(order_id="o-1", reservation_id="r-1"),
    ).when_due(PaymentOverdue).then_sends(ReleaseStock(reservation_id="r-1")).then_publishes(
        OrderRejected(order_id="o-1", why="payment overdue")
    ).then_compensated(reason="overdue", steps=["stock_reserved"])


def test_a_shipment_failure_compensates_every_step_newest_first() -> None:
    saga_scenario(OrderFulfilment).given(
        OrderPlaced(order_id="o-1", sku="mug", quantity=2, amount_cents=1800),
        StockReserved(order_id="o-1", reservation_id="r-1"),
        PaymentCaptured(order_id="o-1", payment_id="p-1"),
    ).when(ShipmentFailed(order_id="o-1", why="lost")).then_sends(
        RefundPayment(payment_id="p-1", amount_cents=1800), ReleaseStock(reservation_id="r-1")
    ).then_compensated(reason="shipment failed: lost")


def test_shipping_completes_the_order_without_compensating() -> None:
    saga_scenario(OrderFulfilment).given(
        OrderPlaced(order_id="o-1", sku="mug", quantity=2, amount_cents=1800),
        StockReserved(order_id="o-1", reservation_id="r-1"),
        PaymentCaptured(order_id="o-1", payment_id="p-1"),
    ).when(OrderShipped(order_id="o-1")).then_publishes(OrderFulfilled(order_id="o-1")).then_sends().then_completed()


def test_an_event_without_a_running_instance_is_ignored_in_a_scenario() -> None:
    saga_scenario(OrderFulfilment).when(PaymentCaptured(order_id="o-9", payment_id="p-9")).then_ignored()


def test_a_failing_expectation_shows_the_first_difference_and_both_lists() -> None:
    # Given a scenario expecting the wrong quantity in the reservation command
    then = saga_scenario(OrderFulfilment).when(OrderPlaced(order_id="o-1", sku="mug", quantity=2, amount_cents=1800))

    # When the expectation is checked
    with pytest.raises(AssertionError) as failure:
        then.then_sends(ReserveStock(order_id="o-1", sku="mug", quantity=3))

    # Then the message says which command and field differ, lists both, and marks the line
    text = str(failure.value)
    assert text.splitlines()[0] == "OrderFulfilment o-1: the commands sent differ from the expected ones"
    assert "first difference: command #1 ReserveStock, field `quantity`: expected 3, sent 2" in text
    assert "  1. ReserveStock(order_id='o-1', sku='mug', quantity=3)" in text
    assert "  1. ReserveStock(order_id='o-1', sku='mug', quantity=2)" in text
    marked = [line for line in text.splitlines() if line.endswith("<- first difference")]
    assert [line.split()[:3] for line in marked] == [["-", "quantity:", "3"], ["+", "quantity:", "2"]]


def test_a_wrong_lifecycle_expectation_says_what_happened_instead() -> None:
    then = saga_scenario(OrderFulfilment).when(OrderPlaced(order_id="o-1", sku="mug", quantity=2, amount_cents=1800))
    with pytest.raises(AssertionError) as failure:
        then.then_completed()
    assert str(failure.value) == (
        "OrderFulfilment o-1: expected the saga to complete, but it started and is running; "
        "sent ReserveStock(order_id='o-1', sku='mug', quantity=2)"
    )


def test_a_given_message_that_reaches_no_instance_is_a_mistake_in_the_scenario() -> None:
    scenario = saga_scenario(AssetProcessing).given(MetadataExtracted(asset_id="a-1", width=1, height=1, format="gif"))
    with pytest.raises(AssertionError, match="was ignored .*start it with a message its @starts step handles"):
        scenario.when(AssetIndexed(asset_id="a-1"))


# -- the command line ----------------------------------------------------------------------------


def test_sagas_list_shows_running_instances_their_deadlines_and_the_archive(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tidings.cli import app as cli
    from tidings.store import open_store

    url = f"sqlite:///{tmp_path / 'sagas.db'}"

    async def given() -> None:
        store = await open_store(url)
        runner = SagaRunner(store, SAGAS)
        await deliver(runner, AssetUploaded(asset_id="listed-1", title="Shown"))
        await deliver(runner, OrderPlaced(order_id="o-7", sku="mug", quantity=1, amount_cents=100))
        await deliver(runner, PaymentFailed(order_id="o-7", why="declined"))
        await store.close()

    asyncio.run(given())
    env = {"COLUMNS": "250"}
    running = CliRunner().invoke(cli, ["sagas", "list", "--database", url], env=env)
    archived = CliRunner().invoke(cli, ["sagas", "list", "--archived", "--database", url], env=env)

    assert running.exit_code == 0, running.output
    assert "running sagas: 1" in running.output and "listed-1" in running.output
    assert '"status":"awaiting metadata"' in running.output
    assert "open deadlines: 1" in running.output and "assets.ProcessingOverdue" in running.output
    assert archived.exit_code == 0, archived.output
    assert "finished sagas: 1" in archived.output and "o-7" in archived.output
    assert "compensated: payments.PaymentFailed" in archived.output


async def test_a_command_is_refused_before_anything_is_written_when_it_names_no_context(store: Store) -> None:
    class _Go(Command):
        ping_id: str

    class _Contextless(Saga):
        @starts(_Ping, key=lambda e: e.ping_id)
        def pinged(self, event: _Ping) -> _Go:
            return _Go(ping_id=event.ping_id)

    with pytest.raises(Exception, match="names no context to send it to"):
        await deliver(SagaRunner(store, [_Contextless]), _Ping(ping_id="p"))
    assert (await count(store, "tidings_sagas"), await count(store, "tidings_outbox")) == (0, 0)
