"""Projections on both stores: checkpoint and read model in one transaction, commit-order gaps, rebuilds, status, CLI.

The PostgreSQL gap tests hold real transactions open (the application's own commit inside a
``store.transaction()`` that stays open, or a raw psycopg connection) and commit later events
around them; nothing is simulated.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote
from uuid import UUID, uuid4

import msgspec
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from model import (
    AllowanceExceeded,
    LicenseOffered,
    LicensePurchased,
    OfferLicense,
    PurchaseLicense,
    ReportUsage,
    UsageReported,
    make_app,
    plant_journal_row,
)
from support import POSTGRES_URL, StoreFactory
from tidings import Application, DomainError, DomainEvent
from tidings.domain.errors import AggregateNotFound, ConcurrencyError
from tidings.cli import app as cli
from tidings.messaging import Envelope, new_id, utc_now
from tidings.runtime import Projection, ProjectionFailed, Projector, handles
from tidings.store import Store, open_store

# -- the read models under test -----------------------------------------------------------------


class LicenseBoard(Projection, name="license_board"):
    """Licenses with their buyer and usage, usage totals per license, offers per product."""

    tables = {
        "board_licenses": {
            "sqlite": (
                "CREATE TABLE {board_licenses} (license_id TEXT PRIMARY KEY, product TEXT NOT NULL, buyer TEXT, "
                "used INTEGER NOT NULL, over INTEGER NOT NULL DEFAULT 0);"
                "CREATE INDEX {board_licenses}_by_buyer ON {board_licenses} (buyer)"
            ),
            "postgresql": (
                "CREATE TABLE {board_licenses} (license_id TEXT PRIMARY KEY, product TEXT NOT NULL, buyer TEXT, "
                "used BIGINT NOT NULL, over BIGINT NOT NULL DEFAULT 0);"
                "CREATE INDEX {board_licenses}_by_buyer ON {board_licenses} (buyer)"
            ),
        },
        "board_usage": "CREATE TABLE {board_usage} (license_id TEXT PRIMARY KEY, reports INTEGER NOT NULL, units INTEGER NOT NULL)",
        "board_products": "CREATE TABLE {board_products} (product TEXT PRIMARY KEY, offered INTEGER NOT NULL)",
    }

    #: Set by a test: the handler of UsageReported raises for this many units (a poison event).
    poison_units: int | None = None

    def __init__(self, registry: Any = None) -> None:
        super().__init__(registry)
        #: Licenses in the order their offers were handled (in committed or failed batches alike).
        self.offer_order: list[str] = []

    @handles
    def offered(self, event: LicenseOffered, envelope: Envelope) -> None:
        self.offer_order.append(envelope.aggregate_id or "")
        self.execute(
            "INSERT INTO {board_licenses} (license_id, product, used) VALUES (?, ?, 0)", (envelope.aggregate_id, event.product)
        )
        self.execute(
            "INSERT INTO {board_products} (product, offered) VALUES (?, 1) "
            "ON CONFLICT (product) DO UPDATE SET offered = {board_products}.offered + 1",
            (event.product,),
        )

    @handles
    def purchased(self, event: LicensePurchased, envelope: Envelope) -> None:
        self.execute("UPDATE {board_licenses} SET buyer = ? WHERE license_id = ?", (event.buyer, envelope.aggregate_id))

    @handles
    def used(self, event: UsageReported, envelope: Envelope) -> None:
        # Written before the poison check, so a test can see that this write never commits.
        self.execute(
            "INSERT INTO {board_usage} (license_id, reports, units) VALUES (?, 1, ?) ON CONFLICT (license_id) "
            "DO UPDATE SET reports = {board_usage}.reports + 1, units = {board_usage}.units + excluded.units",
            (envelope.aggregate_id, event.units),
        )
        if event.units == self.poison_units:
            raise ValueError(f"refusing {event.units} units")
        self.execute("UPDATE {board_licenses} SET used = used + ? WHERE license_id = ?", (event.units, envelope.aggregate_id))

    @handles
    def exceeded(self, event: AllowanceExceeded, envelope: Envelope) -> None:
        self.execute("UPDATE {board_licenses} SET over = over + ? WHERE license_id = ?", (event.over_by, event.license_id))


class PurchasesByProduct(Projection):
    """An async handler that reads its own read model inside the batch (so it must see the batch's writes)."""

    tables = {
        "pbp_licenses": "CREATE TABLE {pbp_licenses} (license_id TEXT PRIMARY KEY, product TEXT NOT NULL)",
        "pbp_counts": "CREATE TABLE {pbp_counts} (product TEXT PRIMARY KEY, purchases INTEGER NOT NULL)",
    }

    @handles
    def offered(self, event: LicenseOffered, envelope: Envelope) -> None:
        self.execute("INSERT INTO {pbp_licenses} (license_id, product) VALUES (?, ?)", (envelope.aggregate_id, event.product))

    @handles
    async def purchased(self, event: LicensePurchased, envelope: Envelope) -> None:
        rows = await self.fetch("SELECT product FROM {pbp_licenses} WHERE license_id = ?", (envelope.aggregate_id,))
        self.execute(
            "INSERT INTO {pbp_counts} (product, purchases) VALUES (?, 1) "
            "ON CONFLICT (product) DO UPDATE SET purchases = {pbp_counts}.purchases + 1",
            (rows[0][0],),
        )


#: What ``tidings projections --app test_projections:PROJECTIONS`` loads.
PROJECTIONS = [LicenseBoard, PurchasesByProduct]


async def board(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of LicenseBoard's live tables, in key order."""
    return {
        "licenses": await store.fetch("SELECT license_id, product, buyer, used, over FROM board_licenses ORDER BY license_id"),
        "usage": await store.fetch("SELECT license_id, reports, units FROM board_usage ORDER BY license_id"),
        "products": await store.fetch("SELECT product, offered FROM board_products ORDER BY product"),
    }


async def purchases(store: Store) -> list[tuple[Any, ...]]:
    return await store.fetch("SELECT product, purchases FROM pbp_counts ORDER BY product")


async def checkpoint(store: Store, name: str = "license_board") -> int:
    rows = await store.fetch("SELECT position FROM tidings_checkpoints WHERE name = ?", (f"projection:{name}",))
    return int(rows[0][0])


async def head(store: Store) -> int:
    return int((await store.fetch("SELECT coalesce(max(position), 0) FROM tidings_journal"))[0][0])


async def sell(app: Application, license_id: str, product: str = "photo", buyer: str = "ada", units: tuple[int, ...] = ()) -> None:
    await app.handle(OfferLicense(license_id=license_id, product=product, allowance=10))
    await app.handle(PurchaseLicense(license_id=license_id, buyer=buyer))
    for n in units:
        await app.handle(ReportUsage(license_id=license_id, units=n))


def projector_for(store: Store, app: Application, *projections: type[Projection], **options: Any) -> Projector:
    return Projector(store, [p(registry=app.registry) for p in projections or (LicenseBoard,)], **options)


# -- applying events ------------------------------------------------------------------------------


async def test_events_are_applied_in_order_and_the_checkpoint_follows(store: Store) -> None:
    # Given licenses sold and used, and a projector reading 4 events per batch
    app = make_app(store)
    await sell(app, "l1", units=(3, 4))
    await sell(app, "l2", product="video", buyer="bob", units=(12,))
    projector = projector_for(store, app, LicenseBoard, PurchasesByProduct, batch_size=4)

    # When it catches up
    positions = await projector.catch_up()

    # Then both read models show every event, and each checkpoint is the journal's head
    assert await board(store) == {
        "licenses": [("l1", "photo", "ada", 7, 0), ("l2", "video", "bob", 12, 2)],
        "usage": [("l1", 2, 7), ("l2", 1, 12)],
        "products": [("photo", 1), ("video", 1)],
    }
    assert await purchases(store) == [("photo", 1), ("video", 1)]
    assert positions == {"license_board": await head(store), "PurchasesByProduct": await head(store)}
    assert await checkpoint(store) == await head(store)

    # And a later command is applied on the next catch-up, from the checkpoint on
    await app.handle(ReportUsage(license_id="l1", units=1))
    await projector.catch_up()
    assert (await board(store))["usage"][0] == ("l1", 3, 8)


async def test_a_failing_handler_commits_neither_its_rows_nor_the_checkpoint(store: Store) -> None:
    # Given usage reports where the one of 13 units makes the handler raise, after it queued a write
    app = make_app(store)
    await sell(app, "l1", units=(2, 13, 5))
    poisoned = [e.position for e in await store.read_journal() if e.event_type == "UsageReported"][1]
    projection = LicenseBoard(registry=app.registry)
    projection.poison_units = 13
    projector = Projector(store, [projection], batch_size=100)

    # When the projector applies the batch containing it
    with pytest.raises(ProjectionFailed) as failed:
        await projector.catch_up()

    # Then the failure names the event, and the checkpoint stops right before it
    assert failed.value.position == poisoned
    assert "13 units" in str(failed.value)
    assert await checkpoint(store) == poisoned - 1
    # The poison's own usage row update never committed: only the first report is in the model
    assert (await board(store))["usage"] == [("l1", 1, 2)]
    assert (await board(store))["licenses"][0][3] == 2
    (status,) = await projector.status()
    assert status.state == "failed" and status.position == poisoned - 1 and "13 units" in (status.last_error or "")

    # When the handler is fixed, the projection resumes at the poison event and applies it once
    projection.poison_units = None
    await projector.catch_up()
    assert (await board(store))["usage"] == [("l1", 3, 20)]
    assert (await projector.status())[0].state == "live"


async def test_a_write_the_database_refuses_rolls_back_the_whole_batch(store: Store) -> None:
    # Given a batch whose third event's write breaks a constraint (a product offered twice under one id)
    app = make_app(store)
    await sell(app, "l1")
    projector = projector_for(store, app, batch_size=100)
    await projector.catch_up()
    before = await board(store), await checkpoint(store)
    await app.handle(ReportUsage(license_id="l1", units=1))
    # A second LicenseOffered for l1 (as a foreign writer might plant it): its INSERT collides with l1's row
    await plant_journal_row(store, "License:l1", 99, "LicenseOffered", 1, b'{"product": "dup", "allowance": 1}')
    await app.handle(ReportUsage(license_id="l1", units=2))

    # When the projector applies them
    with pytest.raises(ProjectionFailed) as failed:
        await projector.catch_up()

    # Then the events before the refused write are applied, the refused one and those after are not
    assert "UNIQUE" in str(failed.value).upper() or "duplicate key" in str(failed.value)
    assert await checkpoint(store) == before[1] + 1
    assert (await board(store))["usage"] == [("l1", 1, 1)]
    assert (await board(store))["products"] == before[0]["products"]


async def test_an_event_that_cannot_be_read_stops_the_projection_with_the_field_named(store: Store) -> None:
    # Given a stored LicenseOffered whose product is a number, between two good events
    app = make_app(store)
    await app.handle(OfferLicense(license_id="l1", product="photo"))
    await plant_journal_row(store, "License:bad", 1, "LicenseOffered", 1, b'{"product": 5, "allowance": 1}')
    await app.handle(OfferLicense(license_id="l2", product="photo"))
    projector = projector_for(store, app)

    # When the projector reaches it
    with pytest.raises(ProjectionFailed) as failed:
        await projector.catch_up()

    # Then it stops right before it, saying which field is wrong; nothing after it is applied
    assert "product" in str(failed.value) and "LicenseOffered" in str(failed.value)
    assert await checkpoint(store) == failed.value.position - 1
    assert [row[0] for row in (await board(store))["licenses"]] == ["l1"]


async def test_a_projection_plugs_into_a_consumer_transaction(store: Store) -> None:
    # Given a projection's consumer callables and one decoded event with its envelope
    app = make_app(store)
    projector = projector_for(store, app)
    await projector.prepare()
    projection = projector["license_board"]
    routes = projection.handlers()
    envelope = Envelope(
        event_id=new_id(), event_type="LicenseOffered", schema_version=1, occurred_at=utc_now(),
        aggregate_type="License", aggregate_id="l9", aggregate_version=1, correlation_id=new_id(),
    )

    # When a consumer runs it in its transaction, and a second one that fails afterwards
    async with store.transaction() as tx:
        await routes[LicenseOffered](envelope, LicenseOffered(product="audio", allowance=1), tx)
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            other = msgspec.structs.replace(envelope, event_id=new_id(), aggregate_id="l10")
            await projection.apply(other, LicenseOffered(product="font", allowance=1), tx)
            raise RuntimeError("the consumer's transaction fails after the projection wrote")

    # Then only the committed transaction's rows exist
    assert (await board(store))["products"] == [("audio", 1)]
    assert set(routes) == {LicenseOffered, LicensePurchased, UsageReported, AllowanceExceeded}


async def test_the_projector_follows_new_commits_while_it_runs(store: Store) -> None:
    # Given a running projector
    app = make_app(store)
    projector = projector_for(store, app, idle_wait=0.05)
    stop = asyncio.Event()
    running = asyncio.create_task(projector.run(stop))
    try:
        # When licenses are sold while it runs
        await sell(app, "l1", units=(4,))
        await sell(app, "l2", units=(6,))

        # Then the read model follows without anyone calling catch_up
        async with asyncio.timeout(10):
            while await checkpoint_or_zero(store) < await head(store):
                await asyncio.sleep(0.02)
        assert [row[3] for row in (await board(store))["licenses"]] == [4, 6]
    finally:
        stop.set()
        await running


async def checkpoint_or_zero(store: Store) -> int:
    rows = await store.fetch("SELECT position FROM tidings_checkpoints WHERE name = 'projection:license_board'")
    return int(rows[0][0]) if rows else 0


class Measured(DomainEvent, name="test.Measured"):
    n: int
    f: float
    d: Decimal
    at: datetime
    ref: UUID
    flag: bool
    note: str | None


class Blobbed(DomainEvent, name="test.Blobbed"):
    data: bytes


class Measurements(Projection):
    """Values of many Python types, written through the batched path and one at a time."""

    tables = {
        "measurements": {
            "postgresql": (
                "CREATE TABLE {measurements} (k TEXT PRIMARY KEY, n BIGINT, f DOUBLE PRECISION, d NUMERIC, "
                "at TIMESTAMPTZ, ref UUID, flag BOOLEAN, note TEXT, data BYTEA)"
            ),
            "sqlite": (
                "CREATE TABLE {measurements} (k TEXT PRIMARY KEY, n INTEGER, f REAL, d TEXT, at TEXT, ref TEXT, "
                "flag INTEGER, note TEXT, data BLOB)"
            ),
        }
    }

    @handles
    def measured(self, event: Measured, envelope: Envelope) -> None:
        self.execute(
            "INSERT INTO {measurements} (k, n, f, d, at, ref, flag, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (k) DO UPDATE SET n = {measurements}.n + excluded.n, f = excluded.f, note = excluded.note",
            # Scaled so that a handler's own arithmetic can give infinity (events cannot carry one: JSON has none).
            (envelope.aggregate_id, event.n, event.f * 1e300, str(event.d), event.at, str(event.ref), event.flag, event.note),
        )

    @handles
    def blobbed(self, event: Blobbed, envelope: Envelope) -> None:
        self.execute("INSERT INTO {measurements} (k, data) VALUES (?, ?)", (envelope.aggregate_id, event.data))


async def test_a_batch_of_writes_stores_the_same_values_as_one_write_at_a_time(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # Given events whose values span the types a read model stores (and repeat a key within the batch)
    at = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
    events: list[tuple[str, DomainEvent]] = [
        ("a", Measured(n=1, f=0.1, d=Decimal("1.10"), at=at, ref=uuid4(), flag=True, note='quotes " and \\ é ✓')),
        ("b", Measured(n=2**62, f=-2.5e-10, d=Decimal("-0.000001"), at=at, ref=uuid4(), flag=False, note=None)),
        ("c", Measured(n=-7, f=1e-300, d=Decimal("12345678901234567890.5"), at=at, ref=uuid4(), flag=False, note="")),
        ("a", Measured(n=5, f=-2.5, d=Decimal("3"), at=at, ref=uuid4(), flag=True, note="second write of a")),
        ("b", Measured(n=1, f=1e10, d=Decimal("0"), at=at, ref=uuid4(), flag=True, note="infinite")),
        ("x", Blobbed(data=b"\x00\xff binary")),
        ("y", Blobbed(data=b"")),
    ]
    for version, (key, event) in enumerate(events, 1):
        await plant_journal_row(store, f"Probe:{key}", version, event.message_name, 1, msgspec.json.encode(event))

    # When a projector applies them as one batch, and the same events are applied one per transaction
    batched = Measurements()
    await Projector(store, [batched], batch_size=100).catch_up()
    rows_batched = await store.fetch("SELECT k, n, f, d, at, ref, flag, note, data FROM measurements ORDER BY k")
    await store.run("DELETE FROM measurements")
    for version, (key, event) in enumerate(events, 1):
        envelope = Envelope(
            event_id=new_id(), event_type=event.message_name, schema_version=1, occurred_at=at,
            aggregate_type="Probe", aggregate_id=key, aggregate_version=version, correlation_id=new_id(),
        )
        async with store.transaction() as tx:
            await batched.apply(envelope, event, tx)
    rows_single = await store.fetch("SELECT k, n, f, d, at, ref, flag, note, data FROM measurements ORDER BY k")

    # Then the rows are identical, and each repeated key got both writes in order
    assert not [r.message for r in caplog.records if r.name == "tidings.projector"], "the batch had to be split"
    assert rows_batched == rows_single
    assert [row[0] for row in rows_batched] == ["a", "b", "c", "x", "y"]
    assert (rows_batched[0][1], rows_batched[0][7]) == (6, "second write of a")
    assert rows_batched[1][1:3] == (2**62 + 1, float("inf"))
    assert bytes(rows_batched[3][8]) == b"\x00\xff binary"


# -- commit-order gaps (PostgreSQL) -----------------------------------------------------------------


class _Rollback(Exception):
    pass


class Held:
    """A command's commit inside a transaction kept open by another task, until commit() or rollback()."""

    def __init__(self, store: Store, app: Application, license_id: str) -> None:
        self.written, self.release = asyncio.Event(), asyncio.Event()
        self.roll_back = True
        self.task = asyncio.create_task(self._hold(store, app, license_id))

    async def _hold(self, store: Store, app: Application, license_id: str) -> None:
        try:
            async with store.transaction():
                await app.handle(OfferLicense(license_id=license_id, product="held"))
                self.written.set()
                await self.release.wait()
                if self.roll_back:
                    raise _Rollback
        except _Rollback:
            pass

    async def end(self, *, commit: bool) -> None:
        self.roll_back = not commit
        self.release.set()
        await self.task


@asynccontextmanager
async def holding(store: Store, app: Application, license_id: str) -> AsyncIterator[Held]:
    """Offer ``license_id`` in a transaction that stays open in the block (rolled back at the end if still open)."""
    held = Held(store, app, license_id)
    await held.written.wait()
    try:
        yield held
    finally:
        if not held.task.done():
            await held.end(commit=False)


async def test_an_uncommitted_earlier_position_stops_the_projector_until_it_commits(postgres_store_factory: StoreFactory) -> None:
    # Given events up to position p, then p+1 written by a transaction still open, then p+2 committed
    store = await postgres_store_factory()
    app = make_app(store)
    await sell(app, "l1")
    projector = projector_for(store, app)
    await projector.catch_up()
    p = await checkpoint(store)
    async with holding(store, app, "held") as held:
        await app.handle(OfferLicense(license_id="later", product="late"))
        assert await store.fetch("SELECT position FROM tidings_journal WHERE position > ?", (p,)) == [(p + 2,)]

        # When the projector catches up
        await projector.catch_up()

        # Then it stops before the hole: p+2 is visible but not applied, because p+1 may still commit
        assert await checkpoint(store) == p
        assert [row[0] for row in (await board(store))["licenses"]] == ["l1"]

        # When the held transaction commits, both are applied, in position order
        await held.end(commit=True)
    projection = projector["license_board"]
    assert isinstance(projection, LicenseBoard)
    projection.offer_order.clear()
    await projector.catch_up()
    assert projection.offer_order == ["held", "later"]
    assert await checkpoint(store) == p + 2
    assert [row[0] for row in (await board(store))["licenses"]] == ["held", "l1", "later"]


async def test_a_rolled_back_position_is_skipped_once_its_writer_ended(postgres_store_factory: StoreFactory) -> None:
    # Given p+1 written by a transaction that will roll back, and p+2 committed
    store = await postgres_store_factory()
    app = make_app(store)
    await sell(app, "l1")
    projector = projector_for(store, app)
    await projector.catch_up()
    p = await checkpoint(store)
    async with holding(store, app, "doomed") as held:
        await app.handle(OfferLicense(license_id="later", product="late"))
        await projector.catch_up()
        assert await checkpoint(store) == p

        # When it rolls back and the projector catches up
        await held.end(commit=False)
    await projector.catch_up()

    # Then the hole is passed over (it can never fill) and p+2 is applied
    assert await checkpoint(store) == p + 2
    assert [row[0] for row in (await board(store))["licenses"]] == ["l1", "later"]


async def test_a_position_taken_before_its_writer_has_a_transaction_id_is_still_waited_for(
    postgres_store_factory: StoreFactory,
) -> None:
    # Given a writer that has taken position p+1 from the journal's identity and holds the journal's
    # write lock, but has no transaction id yet (nextval assigns none for 31 of every 32 values) —
    # the moment between an INSERT's nextval and its row write. pg_snapshot_xip cannot list it.
    store = await postgres_store_factory()
    app = make_app(store)
    await sell(app, "l1")
    projector = projector_for(store, app)
    await projector.catch_up()
    p = await checkpoint(store)
    writer = await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True, options=f"-c search_path={store.schema}")  # type: ignore[attr-defined]
    try:
        for _ in range(40):
            await writer.execute("BEGIN")
            await writer.execute("LOCK TABLE tidings_journal IN ROW EXCLUSIVE MODE")
            cur = await writer.execute(
                "SELECT nextval(pg_get_serial_sequence('tidings_journal', 'position')), pg_current_xact_id_if_assigned()"
            )
            taken, xid = await cur.fetchone()  # type: ignore[misc]
            if xid is None:
                break
            await writer.execute("ROLLBACK")  # this nextval logged the sequence (and got an xid): try the next
        assert xid is None, "could not catch a writer without a transaction id"
        await app.handle(OfferLicense(license_id="later", product="late"))
        later = (await store.fetch("SELECT max(position) FROM tidings_journal"))[0][0]
        assert later > taken > p

        # When the projector catches up while that writer is still between nextval and its row
        await projector.catch_up()

        # Then it does not pass the position the writer holds
        assert await checkpoint(store) == taken - 1

        # When the writer's row lands and commits, it is applied before the later event
        event_id = new_id()
        envelope = msgspec.json.encode(
            Envelope(
                event_id=event_id, event_type="LicenseOffered", schema_version=1, occurred_at=utc_now(),
                aggregate_type="License", aggregate_id="slow", aggregate_version=1, correlation_id=event_id,
            )
        ).decode()
        await writer.execute(
            "INSERT INTO tidings_journal (position, stream_id, stream_version, event_id, event_type, schema_version, "
            "occurred_at, correlation_id, envelope, payload) OVERRIDING SYSTEM VALUE "
            "VALUES (%s, 'License:slow', 1, %s, 'LicenseOffered', 1, now(), %s, %s, %s)",
            (taken, event_id, event_id, envelope, '{"product": "slow", "allowance": 1}'),
        )
        await writer.execute("COMMIT")
    finally:
        await writer.close()
    await projector.catch_up()
    assert await checkpoint(store) == later
    assert [row[0] for row in (await board(store))["licenses"]] == ["l1", "later", "slow"]


async def test_holes_on_sqlite_are_final_and_passed_at_once(tmp_path: Any) -> None:
    # Given (SQLite) a journal with a position missing below visible ones — as after a deleted row
    store = await open_store(f"sqlite:///{tmp_path / 'holes.db'}")
    app = make_app(store)
    await sell(app, "l1")
    await app.handle(OfferLicense(license_id="l2", product="photo"))
    await app.handle(OfferLicense(license_id="l3", product="photo"))
    gone = (await head(store)) - 1
    await store.run("DELETE FROM tidings_journal WHERE position = ?", (gone,))

    # When the projector catches up
    projector = projector_for(store, app)
    await projector.catch_up()

    # Then it passes the hole without waiting: SQLite's single writer means nothing below a visible row is in flight
    assert await checkpoint(store) == await head(store)
    assert [row[0] for row in (await board(store))["licenses"]] == ["l1", "l3"]
    await store.close()


# -- rebuilds ------------------------------------------------------------------------------------------


license_ids = st.sampled_from(["a", "b", "c", "d"])
operations = st.lists(
    st.one_of(
        st.tuples(st.just("offer"), license_ids, st.sampled_from(["photo", "video", "font"])),
        st.tuples(st.just("buy"), license_ids, st.sampled_from(["ada", "bob"])),
        st.tuples(st.just("use"), license_ids, st.integers(1, 9)),
        st.tuples(st.just("project"), st.integers(1, 9), st.just(None)),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=operations, batch_size=st.integers(1, 7), rebuild_batch_size=st.integers(1, 50))
async def test_a_rebuild_from_scratch_equals_the_incrementally_built_model(
    store: Store, ops: list[tuple[str, Any, Any]], batch_size: int, rebuild_batch_size: int
) -> None:
    # Given a random history, projected incrementally in small batches between commands
    # (one store serves every example: each starts from a fresh read model over the journal so far)
    app = make_app(store)
    run = new_id()[-6:]
    projector = projector_for(store, app, LicenseBoard, PurchasesByProduct, batch_size=batch_size, rebuild_batch_size=rebuild_batch_size)
    await reset_read_models(store, projector)
    for op, license_id, value in ops:
        try:
            if op == "offer":
                await app.handle(OfferLicense(license_id=f"{run}{license_id}", product=value))
            elif op == "buy":
                await app.handle(PurchaseLicense(license_id=f"{run}{license_id}", buyer=value))
            elif op == "use":
                await app.handle(ReportUsage(license_id=f"{run}{license_id}", units=value))
            else:
                await projector.catch_up()
        except (DomainError, AggregateNotFound, ConcurrencyError):
            pass  # refused commands (not offered yet, sold twice, offered twice) record nothing
    await projector.catch_up()
    incremental = await board(store), await purchases(store), await checkpoint(store)

    # When both are rebuilt from the journal alone
    await projector.rebuild("license_board")
    await projector.rebuild("PurchasesByProduct")

    # Then the rebuilt models are identical, at the same position
    assert (await board(store), await purchases(store), await checkpoint(store)) == incremental
    assert incremental[2] == await head(store)


async def reset_read_models(store: Store, projector: Projector) -> None:
    """Forget every read model of ``projector`` (tables, checkpoints, bookkeeping) so it starts from nothing."""
    for name, projection in projector.projections.items():
        for table in projection.tables:
            await store.run(f"DROP TABLE IF EXISTS {table}")
        await store.run("DELETE FROM tidings_checkpoints WHERE name LIKE ?", (f"projection:{name}%",))
        await store.run("DELETE FROM tidings_projections WHERE name = ?", (name,))


async def test_readers_see_the_old_complete_model_while_a_rebuild_runs(store: Store) -> None:
    # Given a complete model of 40 licenses with usage
    app = make_app(store)
    for i in range(40):
        await sell(app, f"l{i:02}", units=(i % 5 + 1,))
    projector = projector_for(store, app, rebuild_batch_size=7)
    await projector.catch_up()
    complete = await board(store)
    totals = (40, sum(i % 5 + 1 for i in range(40)))

    # When it is rebuilt while another connection reads the live table as fast as it can
    observed: list[tuple[int, int]] = []
    half_built: list[int] = []
    stop = threading.Event()
    reader = threading.Thread(target=read_continuously, args=(store, stop, observed, half_built))
    reader.start()
    progress: list[int] = []
    try:
        await asyncio.sleep(0.05)
        # Each batch's progress report pauses the loop briefly, so the reader gets turns mid-rebuild.
        result = await projector.rebuild("license_board", progress=lambda p: (progress.append(p.position), time.sleep(0.005)))
    finally:
        stop.set()
        reader.join()

    # Then every read saw the whole model; meanwhile the rebuild table was seen partly filled
    assert observed and set(observed) == {totals}
    assert any(0 < n < 40 for n in half_built), f"the reader never caught the rebuild mid-way: {half_built[:20]}"
    assert len(progress) > 5 and progress == sorted(progress) and progress[-1] == result.position
    assert await board(store) == complete


def read_continuously(store: Store, stop: threading.Event, observed: list[tuple[int, int]], half_built: list[int]) -> None:
    """From another connection: the live table's count and usage total, and how full the rebuild table is."""
    live = "SELECT count(*), coalesce(sum(used), 0) FROM board_licenses"
    partial = "SELECT count(*) FROM board_licenses__rebuild"
    if store.dialect == "postgresql":
        conn: Any = psycopg.connect(POSTGRES_URL, autocommit=True, options=f"-c search_path={store.schema}")  # type: ignore[attr-defined]
    else:
        import sqlite3

        conn = sqlite3.connect(store.path, isolation_level=None)  # type: ignore[attr-defined]
    try:
        while not stop.is_set():
            count, used = conn.execute(live).fetchone()
            observed.append((int(count), int(used)))
            try:
                half_built.append(int(conn.execute(partial).fetchone()[0]))
            except Exception:
                pass  # not created yet, or already swapped in
    finally:
        conn.close()


async def test_a_running_projector_follows_the_rebuilt_tables(store: Store) -> None:
    # Given a projector running while the projection is rebuilt
    app = make_app(store)
    await sell(app, "l1", units=(2,))
    projector = projector_for(store, app, idle_wait=0.05)
    stop = asyncio.Event()
    running = asyncio.create_task(projector.run(stop))
    try:
        await projector.rebuild("license_board")

        # When more events are committed after the swap
        await sell(app, "l2", units=(3,))

        # Then the running projector applies them to the new live tables
        async with asyncio.timeout(10):
            while await checkpoint(store) < await head(store):
                await asyncio.sleep(0.02)
        assert [row[:4] for row in (await board(store))["licenses"]] == [("l1", "photo", "ada", 2), ("l2", "photo", "ada", 3)]
        assert await store.fetch("SELECT count(*) FROM tidings_checkpoints WHERE name LIKE '%:rebuild'") == [(0,)]
    finally:
        stop.set()
        await running


# -- status ------------------------------------------------------------------------------------------


async def test_status_reports_lag_in_events_and_seconds(store: Store) -> None:
    # Given a projection caught up, then 5 more events whose first occurred 90 seconds ago
    app = make_app(store)
    await sell(app, "l1")
    projector = projector_for(store, app)
    await projector.catch_up()
    caught_up = await checkpoint(store)
    await sell(app, "l2", units=(1, 2, 3))
    past = (utc_now() - timedelta(seconds=90)).isoformat() if store.dialect == "sqlite" else utc_now() - timedelta(seconds=90)
    await store.run("UPDATE tidings_journal SET occurred_at = ? WHERE position = ?", (past, caught_up + 1))

    # When the status is asked
    (lagging,) = await projector.status()

    # Then it shows the position, 5 events behind the head, about 90 seconds old
    assert (lagging.name, lagging.position, lagging.head, lagging.lag_events) == ("license_board", caught_up, caught_up + 5, 5)
    assert 89 <= lagging.lag_seconds < 120
    assert lagging.state == "live"

    # And once caught up, no lag
    await projector.catch_up()
    (current,) = await projector.status()
    assert (current.lag_events, current.lag_seconds) == (0, 0.0)


# -- declarations ------------------------------------------------------------------------------------


def test_declaration_mistakes_are_refused_with_the_fix() -> None:
    with pytest.raises(TypeError, match=r"\{rows\}_by_name"):

        class NamedIndex(Projection):
            tables = {"rows": "CREATE TABLE {rows} (id TEXT PRIMARY KEY); CREATE INDEX by_name ON {rows} (id)"}

    with pytest.raises(TypeError, match="annotate the event parameter"):

        class Unannotated(Projection):
            @handles
            def on(self, event) -> None:  # type: ignore[no-untyped-def]
                pass

        Unannotated.handler_table()

    class One(Projection):
        tables = {"shared": "CREATE TABLE {shared} (id TEXT)"}

    class Two(Projection):
        tables = {"shared": "CREATE TABLE {shared} (id TEXT)"}

    with pytest.raises(ValueError, match="both declare table 'shared'"):
        Projector(None, [One, Two])  # type: ignore[arg-type]


def test_a_union_annotation_handles_each_member() -> None:
    class Both(Projection):
        @handles
        def either(self, event: LicenseOffered | LicensePurchased) -> None:
            pass

    assert set(Both.handler_table()) == {"LicenseOffered", "LicensePurchased"}


# -- the command line ----------------------------------------------------------------------------------


def cli_url(store: Store) -> str:
    if store.dialect == "postgresql":
        return f"{POSTGRES_URL}?options={quote(f'-c search_path={store.schema}')}"  # type: ignore[attr-defined]
    return store.url


async def test_cli_shows_status_and_rebuilds_with_a_progress_bar(store: Store) -> None:
    # Given a projection 3 events behind
    app = make_app(store)
    await sell(app, "l1", units=(4,))
    await projector_for(store, app, LicenseBoard, PurchasesByProduct).catch_up()
    await sell(app, "l2")
    runner = CliRunner()
    options = ["--app", "test_projections:PROJECTIONS", "--database", cli_url(store)]

    # When the operator asks for the status
    status = await asyncio.to_thread(runner.invoke, cli, ["projections", "status", *options], env={"COLUMNS": "200"})

    # Then each projection is listed with its position and lag
    assert status.exit_code == 0, status.output
    line = next(line for line in status.output.splitlines() if "license_board" in line)
    assert str(await checkpoint(store)) in line and " 3 " in f" {line} "
    assert "PurchasesByProduct" in status.output

    # When they rebuild it
    before = await board(store)
    rebuilt = await asyncio.to_thread(
        runner.invoke, cli, ["projections", "rebuild", "license_board", *options], env={"COLUMNS": "200"}
    )

    # Then it reports the rebuild, and the model now includes the 3 new events too
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "rebuilt license_board" in rebuilt.output
    after = await board(store)
    assert after != before and [row[0] for row in after["licenses"]] == ["l1", "l2"]
    assert await checkpoint(store) == await head(store)

    # And an unknown name is refused with the known ones listed
    unknown = await asyncio.to_thread(runner.invoke, cli, ["projections", "rebuild", "nope", *options])
    assert unknown.exit_code == 2 and "license_board" in unknown.output
