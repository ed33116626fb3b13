"""SQL of a handler's own commits with the command (or the consumed message), or not at all, on both stores."""

from __future__ import annotations

import asyncio

import pytest

from model import (
    License,
    LicensePurchaseConfirmed,
    LicensePurchased,
    OfferLicense,
    PurchaseLicense,
    ReportUsage,
    UsageReported,
    make_app,
)
from tidings import UnitOfWork
from tidings.brokers.local import LocalBroker
from tidings.messaging import new_id
from tidings.runtime import Consumer, HandlerContext, Relay
from support import StoreFactory
from tidings.store import NoTransaction, Store


async def _notes_table(store: Store) -> None:
    await store.run("CREATE TABLE notes (note TEXT NOT NULL)")


async def _notes(store: Store) -> list[str]:
    return [row[0] for row in await store.fetch("SELECT note FROM notes ORDER BY note")]


async def test_store_run_in_a_bus_handler_is_rolled_back_with_the_command(store: Store) -> None:
    # Given a domain-bus handler that writes SQL through the store itself, and a later one that raises
    await _notes_table(store)
    app = make_app(store)

    @app.on(UsageReported)
    async def note_usage(event: UsageReported, uow: UnitOfWork) -> None:
        await store.run("INSERT INTO notes (note) VALUES (?)", (f"used {event.units}",))

    @app.on(UsageReported)
    def fail_after_the_note(event: UsageReported, uow: UnitOfWork) -> None:
        raise RuntimeError("billing is down")

    license_id = new_id()
    await app.handle(OfferLicense(license_id=license_id, product="Editor"))
    await app.handle(PurchaseLicense(license_id=license_id, buyer="ada"))
    # When usage is reported and the command fails after the note was written
    with pytest.raises(RuntimeError, match="billing is down"):
        await app.handle(ReportUsage(license_id=license_id, units=3))
    # Then the note did not survive the rolled-back command, and the license is unchanged
    assert await _notes(store) == []
    assert (await app.load(License, license_id)).used == 0


async def test_uow_execute_commits_with_the_command_and_reads_its_own_writes(store: Store) -> None:
    # Given a command handler that writes and reads SQL in its unit of work
    await _notes_table(store)
    app = make_app(store)
    seen: list[list[tuple[object, ...]]] = []

    @app.on(LicensePurchased)
    async def note(event: LicensePurchased, uow: UnitOfWork) -> None:
        await uow.execute("INSERT INTO notes (note) VALUES (?)", (f"sold to {event.buyer}",))
        seen.append(await uow.execute("SELECT count(*) FROM notes"))

    license_id = new_id()
    await app.handle(OfferLicense(license_id=license_id, product="Editor"))
    # When the purchase commits
    await app.handle(PurchaseLicense(license_id=license_id, buyer="ada"))
    # Then the handler saw its own row, and the row is there with the purchase
    assert seen == [[(1,)]]
    assert await _notes(store) == ["sold to ada"]
    assert (await app.load(License, license_id)).buyer == "ada"


async def test_uow_execute_then_a_failing_handler_leaves_nothing(store: Store) -> None:
    # Given a bus handler that writes SQL through uow.execute and its connection, and a later one that raises
    await _notes_table(store)
    app = make_app(store)

    @app.on(LicensePurchased)
    async def note(event: LicensePurchased, uow: UnitOfWork) -> None:
        await uow.execute("INSERT INTO notes (note) VALUES (?)", ("by execute",))
        connection = await uow.connection()
        if store.dialect == "sqlite":
            connection.execute("INSERT INTO notes (note) VALUES (?)", ("by the connection",))
        else:
            await connection.execute("INSERT INTO notes (note) VALUES (%s)", ("by the connection",))

    @app.on(LicensePurchased)
    def refuse(event: LicensePurchased, uow: UnitOfWork) -> None:
        raise RuntimeError("no sale today")

    license_id = new_id()
    await app.handle(OfferLicense(license_id=license_id, product="Editor"))
    outbox = await store.count("outbox")
    # When the purchase is handled
    with pytest.raises(RuntimeError, match="no sale today"):
        await app.handle(PurchaseLicense(license_id=license_id, buyer="ada"))
    # Then no note, no journal row, no outbox row was left
    assert await _notes(store) == []
    assert await store.count("outbox") == outbox
    assert (await app.load(License, license_id)).buyer is None


async def test_connection_outside_a_transaction_is_refused(store: Store) -> None:
    # Given no open transaction / when the connection is asked for / then the error says where it works
    with pytest.raises(NoTransaction, match="inside a transaction"):
        await store.connection()


async def test_consumer_handler_sql_commits_with_the_inbox_or_not_at_all(store: Store) -> None:
    # Given a consumer whose handler writes SQL through ctx.execute, and fails on the first delivery
    await _notes_table(store)
    app = make_app(store)
    broker = LocalBroker(store, poll_interval=0.02)
    runs = 0

    consumer = Consumer("notes", store, broker, topics=["licensing"])  # where the translator publishes it

    @consumer.handler(LicensePurchaseConfirmed)
    async def note(event: LicensePurchaseConfirmed, ctx: HandlerContext) -> None:
        nonlocal runs
        runs += 1
        await ctx.execute("INSERT INTO notes (note) VALUES (?)", (f"run {runs}",))
        connection = await ctx.connection()
        if store.dialect == "sqlite":
            connection.execute("INSERT INTO notes (note) VALUES (?)", (f"conn {runs}",))
        else:
            await connection.execute("INSERT INTO notes (note) VALUES (%s)", (f"conn {runs}",))
        assert (await ctx.execute("SELECT count(*) FROM notes")) == [(2,)]  # its own writes, not an earlier run's
        if runs == 1:
            raise RuntimeError("first run fails")

    license_id = new_id()
    await app.handle(OfferLicense(license_id=license_id, product="Editor"))
    await app.handle(PurchaseLicense(license_id=license_id, buyer="ada"))
    await Relay(store, broker).drain()
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        async with asyncio.timeout(10):
            while consumer.stats.applied < 1:
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await task
    # Then only the successful run's note is there
    assert runs == 2
    assert await _notes(store) == ["conn 2", "run 2"]


async def test_a_task_started_by_a_handler_is_not_part_of_the_command(store: Store) -> None:
    # Given a bus handler that starts a task writing SQL and does not wait for it, then a failing handler
    await _notes_table(store)
    app = make_app(store)
    started: list[asyncio.Task[int]] = []

    @app.on(LicensePurchased)
    def spawn(event: LicensePurchased, uow: UnitOfWork) -> None:
        started.append(asyncio.get_running_loop().create_task(store.run("INSERT INTO notes (note) VALUES (?)", ("aside",))))

    @app.on(LicensePurchased)
    def refuse(event: LicensePurchased, uow: UnitOfWork) -> None:
        raise RuntimeError("no sale today")

    license_id = new_id()
    await app.handle(OfferLicense(license_id=license_id, product="Editor"))
    # When the command fails
    with pytest.raises(RuntimeError, match="no sale today"):
        await app.handle(PurchaseLicense(license_id=license_id, buyer="ada"))
    # Then the task neither hung on nor joined the command's transaction: its write is its own
    assert await asyncio.wait_for(started[0], 5) == 1
    assert await _notes(store) == ["aside"]


async def test_sql_of_an_attempt_lost_to_a_racing_command_is_rolled_back_before_the_retry(store_factory: StoreFactory) -> None:
    # Given two applications on two stores of one database whose bus handlers both write a note
    # after both loaded the same license (so one of them must lose the race and retry)
    stores = [await store_factory(), await store_factory()]
    await _notes_table(stores[0])
    arrived = 0
    both_loaded = asyncio.Event()
    apps = []
    for store in stores:
        app = make_app(store)

        @app.on(UsageReported)
        async def note(event: UsageReported, uow: UnitOfWork) -> None:
            nonlocal arrived
            arrived += 1
            if arrived >= 2:
                both_loaded.set()
            await asyncio.wait_for(both_loaded.wait(), 10)
            await uow.execute("INSERT INTO notes (note) VALUES (?)", (f"used {event.units}",))

        apps.append(app)
    license_id = new_id()
    await apps[0].handle(OfferLicense(license_id=license_id, product="Editor"))
    await apps[0].handle(PurchaseLicense(license_id=license_id, buyer="ada"))
    # When both report usage at once, with one retry each
    await asyncio.gather(*(app.handle(ReportUsage(license_id=license_id, units=n), retries=1) for app, n in zip(apps, (1, 2))))
    # Then three attempts ran, but only the two that committed left a note
    assert arrived == 3
    assert await _notes(stores[0]) == ["used 1", "used 2"]
    assert (await apps[0].load(License, license_id)).used == 3
