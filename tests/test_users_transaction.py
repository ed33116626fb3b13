"""A command handled, or a message published, inside the user's own transaction (SQLAlchemy or psycopg).

Their rows and ours commit together or not at all; tidings never commits their transaction,
refuses when none is open, and a conflict undoes only our rows. PostgreSQL only: a user's SQLite
connection is refused with the reason (docs/decisions/0025).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import psycopg
import pytest
from sqlalchemy import String, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from model import Counter, Increment, Incremented, License, LicensePurchaseConfirmed, OfferLicense, PurchaseLicense, make_app
from relay_model import Tick, make_ticker_app
from support import POSTGRES_URL, require_service
from tidings import Application, Command, ConcurrencyError, IntegrationEvent, Personal, UnitOfWork
from tidings import joined
from tidings.brokers.local import LocalBroker
from tidings.joined import CannotJoin, NoTransaction, Outbox
from tidings.messaging import new_id
from tidings.messaging.personal import MASTER_KEY_ENV, MasterKey
from tidings.runtime import Relay
from tidings.store import open_store
from tidings.store.postgres import PostgresStore


class Base(DeclarativeBase):
    pass


class Invoice(Base):
    """The user's own ORM row, committed with (or without) ours."""

    __tablename__ = "invoices"
    id: Mapped[str] = mapped_column(String, primary_key=True)
    buyer: Mapped[str] = mapped_column(String)


class Pg:
    """A migrated store in a fresh schema and a SQLAlchemy engine whose connections search that schema."""

    def __init__(self, store: PostgresStore, engine: AsyncEngine, schema: str) -> None:
        self.store, self.engine, self.schema = store, engine, schema
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def psycopg_connection(self, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(POSTGRES_URL, options=f"-c search_path={self.schema}", **kwargs)

    async def invoices(self) -> list[str]:
        return [row[0] for row in await self.store.fetch("SELECT id FROM invoices ORDER BY id")]


@pytest.fixture
async def pg() -> AsyncIterator[Pg]:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    store = await open_store(POSTGRES_URL, schema=schema, migrate=True)
    assert isinstance(store, PostgresStore)
    engine = create_async_engine(
        POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://"),
        connect_args={"options": f"-c search_path={schema}"},
    )
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    try:
        yield Pg(store, engine, schema)
    finally:
        await engine.dispose()
        await store.drop_schema()
        await store.close()


async def _offered(app: Application) -> str:
    license_id = new_id()
    await app.handle(OfferLicense(license_id=license_id, product="Editor"))
    return license_id


async def test_a_command_in_the_users_session_commits_with_their_orm_rows(pg: Pg) -> None:
    # Given an offered license and the user's SQLAlchemy session with a transaction begun
    app = make_app(pg.store)
    license_id = await _offered(app)
    async with pg.sessions() as session:
        async with session.begin():
            # When they add their own row and handle a command in the same transaction
            session.add(Invoice(id="inv-1", buyer="ada"))
            result = await joined.handle(app, PurchaseLicense(license_id=license_id, buyer="ada"), session=session)
            # Then nothing is visible to others before their commit: tidings did not commit it
            assert await pg.store.count("outbox") == 0
            assert (await app.load(License, license_id)).buyer is None
    # And after their commit, their row, our state and our outbox row are all there
    assert await pg.invoices() == ["inv-1"]
    assert (await app.load(License, license_id)).buyer == "ada"
    outbox = await pg.store.read_outbox()
    assert [row.event_id for row in outbox] == [e.event_id for e in result.published]
    assert [row.event_type for row in outbox] == [LicensePurchaseConfirmed.message_name]


async def test_the_users_rollback_leaves_none_of_our_rows(pg: Pg) -> None:
    # Given a command handled in the user's session
    app = make_app(pg.store)
    license_id = await _offered(app)
    journal_before = await pg.store.count("journal")
    async with pg.sessions() as session:
        with pytest.raises(RuntimeError, match="payment provider said no"):
            async with session.begin():
                session.add(Invoice(id="inv-2", buyer="ada"))
                await joined.handle(app, PurchaseLicense(license_id=license_id, buyer="ada"), session=session)
                await Outbox(app).add(Incremented(by=1), key="k", session=session)
                # When the user's code fails afterwards, inside their transaction
                raise RuntimeError("payment provider said no")
    # Then neither their row nor any of ours exists
    assert await pg.invoices() == []
    assert await pg.store.count("journal") == journal_before
    assert await pg.store.count("outbox") == 0
    assert (await app.load(License, license_id)).buyer is None


async def test_a_conflict_undoes_only_our_rows_and_the_users_transaction_goes_on(pg: Pg) -> None:
    # Given a counter, and a racing writer (another store) that commits to it while our command runs
    app = make_app(pg.store)
    other_store = await open_store(POSTGRES_URL, schema=pg.schema)
    other = make_app(other_store)
    await app.handle(Increment(counter_id="c", by=1))
    raced = False

    @app.on(Incremented)
    async def race(event: Incremented, uow: UnitOfWork) -> None:
        nonlocal raced
        if not raced:
            raced = True
            await other.handle(Increment(counter_id="c", by=100))

    try:
        async with pg.sessions() as session:
            async with session.begin():
                session.add(Invoice(id="inv-3", buyer="ada"))
                # When our command's commit finds the counter moved on
                with pytest.raises(ConcurrencyError, match="Counter c"):
                    await joined.handle(app, Increment(counter_id="c", by=10), session=session)
                # Then the user's transaction is still usable: they keep their row and commit it
                assert (await session.execute(select(Invoice.id))).scalars().all() == ["inv-3"]
    finally:
        await other_store.close()
    assert await pg.invoices() == ["inv-3"]
    assert (await app.load(Counter, "c")).value == 101  # the racer's change; ours was undone
    assert await pg.store.count("journal") == 2


async def test_retries_reload_and_commit_within_the_users_transaction(pg: Pg) -> None:
    # Given the same race, and a command handled with one retry
    app = make_app(pg.store)
    other_store = await open_store(POSTGRES_URL, schema=pg.schema)
    other = make_app(other_store)
    await app.handle(Increment(counter_id="c", by=1))
    raced = False

    @app.on(Incremented)
    async def race(event: Incremented, uow: UnitOfWork) -> None:
        nonlocal raced
        if not raced:
            raced = True
            await other.handle(Increment(counter_id="c", by=100))

    try:
        async with pg.sessions() as session, session.begin():
            session.add(Invoice(id="inv-4", buyer="ada"))
            result = await joined.handle(app, Increment(counter_id="c", by=10), session=session, retries=1)
    finally:
        await other_store.close()
    # Then the retry reloaded the racer's version and both commit with the user's row
    assert result.value == 111
    assert await pg.invoices() == ["inv-4"]
    assert (await app.load(Counter, "c")).value == 111


async def test_no_open_transaction_is_refused_before_anything_is_written(pg: Pg) -> None:
    app = make_app(pg.store)
    license_id = await _offered(app)
    command = PurchaseLicense(license_id=license_id, buyer="ada")
    # A SQLAlchemy session outside begin(): its autobegin would open a transaction nobody commits
    async with pg.sessions() as session:
        with pytest.raises(NoTransaction, match=r"session\.begin\(\)"):
            await joined.handle(app, command, session=session)
    # A psycopg connection in autocommit mode outside a transaction: each statement would commit alone
    conn = await pg.psycopg_connection(autocommit=True)
    try:
        with pytest.raises(NoTransaction, match="autocommit"):
            await joined.handle(app, command, connection=conn)
    finally:
        await conn.close()
    assert (await app.load(License, license_id)).buyer is None
    assert await pg.store.count("outbox") == 0


async def test_publishing_only_commits_with_the_users_transaction(pg: Pg) -> None:
    app = make_app(pg.store)
    outbox = Outbox(app)
    async with pg.sessions() as session:
        async with session.begin():
            session.add(Invoice(id="inv-5", buyer="ada"))
            envelope = await outbox.add(Incremented(by=3), key="inv-5", topic="invoices", session=session)
            assert await pg.store.count("outbox") == 0
    [row] = await pg.store.read_outbox()
    assert (row.event_id, row.topic, row.partition_key) == (envelope.event_id, "invoices", "inv-5")
    assert envelope.source == app.name


async def test_a_plain_psycopg_connection_the_user_owns(pg: Pg) -> None:
    app = make_app(pg.store)
    license_id = await _offered(app)
    other_id = await _offered(app)
    conn = await pg.psycopg_connection()
    try:
        # Committed: their row and ours
        async with conn.transaction():
            await conn.execute("INSERT INTO invoices (id, buyer) VALUES ('inv-6', 'ada')")
            await joined.handle(app, PurchaseLicense(license_id=license_id, buyer="ada"), connection=conn)
        # Rolled back by their code: neither
        with pytest.raises(RuntimeError, match="changed my mind"):
            async with conn.transaction():
                await conn.execute("INSERT INTO invoices (id, buyer) VALUES ('inv-7', 'bob')")
                await joined.handle(app, PurchaseLicense(license_id=other_id, buyer="bob"), connection=conn)
                raise RuntimeError("changed my mind")
        # A non-autocommit connection with no statement yet: the transaction psycopg begins is theirs to commit
        await joined.handle(app, PurchaseLicense(license_id=other_id, buyer="cy"), connection=conn)
        assert (await app.load(License, other_id)).buyer is None
        await conn.commit()
    finally:
        await conn.close()
    assert await pg.invoices() == ["inv-6"]
    assert (await app.load(License, license_id)).buyer == "ada"
    assert (await app.load(License, other_id)).buyer == "cy"
    assert await pg.store.count("outbox") == 2


async def test_a_waiting_relay_wakes_when_the_user_commits(pg: Pg) -> None:
    # Given a relay that would otherwise poll only every 30 s, idle
    app = make_ticker_app(pg.store)
    relay = Relay(pg.store, LocalBroker(pg.store), idle_wait=30.0, rebalance_interval=30.0)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        deadline = time.monotonic() + 10
        while not relay.waiting and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert relay.waiting and relay.owned, "the relay never went idle"
        # When a command commits with the user's session
        async with pg.sessions() as session, session.begin():
            await joined.handle(app, Tick(ticker_id="wake"), session=session)
        # Then it is delivered long before the poll interval
        deadline = time.monotonic() + 5
        while await pg.store.fetch("SELECT 1 FROM tidings_outbox WHERE delivered_at IS NULL") and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert await pg.store.fetch("SELECT key FROM tidings_local_log") == [("wake",)]
    finally:
        stop.set()
        await task


async def test_a_users_sqlite_session_is_refused_with_the_reason(tmp_path: Path) -> None:
    # Given an application on SQLite and the user's SQLAlchemy session on the same file (aiosqlite)
    store = await open_store(f"sqlite:///{tmp_path / 'app.db'}")
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        app = make_app(store)
        async with AsyncSession(engine) as session, session.begin():
            session.add(Invoice(id="inv-8", buyer="ada"))
            # When it asks to handle a command in that session, it is refused, saying why and what to do
            with pytest.raises(CannotJoin, match="one writer at a time.*uow.execute"):
                await joined.handle(app, OfferLicense(license_id="l", product="Editor"), session=session)
        # Even with a PostgreSQL-shaped application, the SQLite session itself is refused
        with pytest.raises(CannotJoin, match="cannot join a SQLite session"):
            async with AsyncSession(engine) as session, session.begin():
                await joined.driver_connection(session=session)
        assert await store.count("journal") == 0
    finally:
        await engine.dispose()
        await store.close()


async def test_a_failed_transaction_or_a_connection_with_its_own_rows_is_refused(pg: Pg) -> None:
    from psycopg.rows import dict_row

    app = make_app(pg.store)
    license_id = await _offered(app)
    command = PurchaseLicense(license_id=license_id, buyer="ada")
    conn = await pg.psycopg_connection()
    try:
        # A transaction in which a statement already failed cannot commit anything: say so, write nothing
        with pytest.raises(psycopg.errors.UndefinedTable):
            await conn.execute("SELECT * FROM no_such_table")
        with pytest.raises(NoTransaction, match="roll it back"):
            await joined.handle(app, command, connection=conn)
        await conn.rollback()
        # A connection whose rows are dicts: the store reads tuples, so it is refused with the fix
        conn.row_factory = dict_row  # type: ignore[assignment]
        with pytest.raises(NoTransaction, match="row factory"):
            await joined.handle(app, command, connection=conn)
    finally:
        await conn.close()
    assert (await app.load(License, license_id)).buyer is None


class IssueInvoice(Command):
    invoice_id: str


async def test_sql_of_the_handler_own_stays_in_a_session_that_ran_nothing_yet(pg: Pg) -> None:
    # Given a handler writing SQL of its own, and a session whose transaction began but sent nothing yet
    app = make_app(pg.store)

    @app.command_handler(IssueInvoice)
    async def issue(command: IssueInvoice, uow: UnitOfWork) -> None:
        await uow.execute("INSERT INTO invoices (id, buyer) VALUES (?, ?)", (command.invoice_id, "ada"))
        uow.publish(LicensePurchaseConfirmed(license_id=command.invoice_id, buyer="ada"), key=command.invoice_id)

    async with pg.sessions() as session:
        with pytest.raises(RuntimeError, match="not today"):
            async with session.begin():
                await joined.handle(app, IssueInvoice(invoice_id="inv-9"), session=session)
                raise RuntimeError("not today")
    # Then the user's rollback took the handler's row and the outbox row with it (psycopg's own
    # transaction block, opened on the idle connection, would have committed them)
    assert await pg.invoices() == []
    assert await pg.store.count("outbox") == 0


class BuyerWelcomed(IntegrationEvent, name="test.BuyerWelcomed"):
    buyer_id: Annotated[str, Personal(subject="buyer_id", mask="[forgotten]")]
    buyer_name: Annotated[str, Personal(subject="buyer_id", mask="[forgotten]")]


async def test_personal_fields_published_in_the_users_transaction_are_sealed(pg: Pg, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a deployment's master key and a contract with personal fields
    monkeypatch.setenv(MASTER_KEY_ENV, MasterKey.generate())
    app = make_app(pg.store)
    # When it is published in the user's transaction
    async with pg.sessions() as session, session.begin():
        await Outbox(app).add(BuyerWelcomed(buyer_id="ada-7", buyer_name="Ada Lovelace"), key="ada-7", session=session)
    # Then the outbox holds no plaintext of them, and the subject's key committed with the row
    [row] = await pg.store.read_outbox()
    assert b"Ada Lovelace" not in row.payload and b"ada-7" not in row.payload
    assert await pg.store.fetch("SELECT count(*) FROM tidings_subject_keys") == [(1,)]


async def test_a_sqlalchemy_connection_works_like_a_session(pg: Pg) -> None:
    app = make_app(pg.store)
    license_id = await _offered(app)
    # Outside begin(): refused
    async with pg.engine.connect() as conn:
        with pytest.raises(NoTransaction, match=r"connection\.begin\(\)"):
            await joined.handle(app, PurchaseLicense(license_id=license_id, buyer="ada"), session=conn)
    # Inside engine.begin(): committed with it
    async with pg.engine.begin() as conn:
        await conn.exec_driver_sql("INSERT INTO invoices (id, buyer) VALUES ('inv-10', 'ada')")
        await joined.handle(app, PurchaseLicense(license_id=license_id, buyer="ada"), session=conn)
    assert await pg.invoices() == ["inv-10"]
    assert (await app.load(License, license_id)).buyer == "ada"
