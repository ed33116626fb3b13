"""Workers meeting a database that is gone for a while (wait, then recover) or refuses them for good (stop, say why).

Both are caused for real: tables are dropped under running workers, and the PostgreSQL server
is cut off by closing a TCP proxy the worker's connections go through.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import quote

import pytest

from consumer_model import effects, message, numbers_consumer, prepare, publish
from model import LicenseOffered, OfferLicense, make_app
from relay_model import Tick, make_ticker_app
from saga_model import SAGAS
from support import POSTGRES_URL, StoreFactory, require_service
from tidings.brokers.local import LocalBroker
from tidings.runtime import Relay
from tidings.runtime.backoff import Backoff
from tidings.messaging import Envelope
from tidings.runtime import Projection, Projector, handles
from tidings.runtime.sagas import SagaRunner
from tidings.runtime.scheduler import Scheduler
from tidings.store import Store, open_store
from tidings.store.errors import PermanentDatabaseError, classify


async def undelivered(store: Store) -> int:
    return int((await store.fetch("SELECT count(*) FROM tidings_outbox WHERE delivered_at IS NULL"))[0][0])


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)


class Offers(Projection, name="offers"):
    """Counts offers per product."""

    tables = {"offers": "CREATE TABLE {offers} (product TEXT PRIMARY KEY, n INTEGER NOT NULL)"}

    @handles
    def offered(self, event: LicenseOffered, envelope: Envelope) -> None:
        self.execute(
            "INSERT INTO {offers} (product, n) VALUES (?, 1) ON CONFLICT (product) DO UPDATE SET n = {offers}.n + 1",
            (event.product,),
        )


# -- refused for good: stop and say what to do --------------------------------------------------


async def test_a_relay_whose_outbox_table_is_dropped_stops_and_says_to_migrate(store: Store) -> None:
    # Given a running relay that has delivered a first event
    app = make_ticker_app(store)
    await app.handle(Tick(ticker_id="t"))
    relay = Relay(store, LocalBroker(store), idle_wait=0.05, rebalance_interval=0.2, backoff=_fast())
    task = asyncio.create_task(relay.run())
    await eventually(lambda: _is_zero(undelivered(store)), 10, "the first event is delivered")

    # When the outbox table is dropped under it (a schema reset, a wrong migration)
    await store.run("DROP TABLE tidings_outbox")

    # Then the relay stops, instead of retrying forever, with an error naming itself and the cure
    with pytest.raises(PermanentDatabaseError) as stopped:
        await asyncio.wait_for(task, 10)
    message = str(stopped.value)
    assert message.startswith(f"relay {relay.relay_id} stopped: the database refused its work")
    assert "tidings_outbox" in message and "run `tidings db migrate`" in message


async def test_a_scheduler_whose_deadline_table_is_dropped_stops_and_says_to_migrate(store: Store) -> None:
    # Given a running scheduler
    scheduler = Scheduler(SagaRunner(store, SAGAS), poll_interval=0.05, backoff=_fast())
    task = asyncio.create_task(scheduler.run())
    await eventually(lambda: _true(scheduler._state == "running"), 10, "the scheduler runs")

    # When the deadlines table is dropped under it ("no such table" on SQLite is an OperationalError too)
    await store.run("DROP TABLE tidings_saga_deadlines")

    # Then it stops with an error naming the cure, instead of waiting for the database forever
    with pytest.raises(PermanentDatabaseError) as stopped:
        await asyncio.wait_for(task, 10)
    assert "scheduler stopped" in str(stopped.value) and "tidings_saga_deadlines" in str(stopped.value)
    assert "run `tidings db migrate`" in str(stopped.value)


async def test_a_projector_whose_journal_table_is_dropped_stops_and_says_to_migrate(store: Store) -> None:
    # Given a running projector that has caught up
    app = make_app(store)
    await app.handle(OfferLicense(license_id="l1", product="photo", allowance=10))
    projector = Projector(store, [Offers(registry=app.registry)], idle_wait=0.05, backoff=_fast())
    task = asyncio.create_task(projector.run())
    await eventually(lambda: _checkpoint_at_head(store), 10, "the projection caught up")

    # When the journal table is dropped under it
    await store.run("DROP TABLE tidings_journal")

    # Then it stops with an error naming the projection and the cure, instead of retrying forever
    with pytest.raises(PermanentDatabaseError) as stopped:
        await asyncio.wait_for(task, 10)
    assert str(stopped.value).startswith("projection offers stopped")
    assert "run `tidings db migrate`" in str(stopped.value)


async def test_a_consumer_whose_dead_letter_table_is_dropped_stops_and_says_to_migrate(store: Store) -> None:
    # Given a running consumer that applied a first message
    await prepare(store)
    broker = LocalBroker(store, poll_interval=0.02)
    await publish(broker, [message("k", 1)])
    consumer = numbers_consumer(store, broker, replay_poll=0.05, rebalance_interval=0.05)
    task = asyncio.create_task(consumer.run())
    await eventually(lambda: _true(consumer.stats.applied == 1), 10, "the first message is applied")

    # When the table it polls for replay requests is dropped under it
    await store.run("DROP TABLE tidings_dead_letters")

    # Then it stops with an error naming itself and the cure, instead of waiting for the database forever
    with pytest.raises(PermanentDatabaseError) as stopped:
        await asyncio.wait_for(task, 10)
    assert str(stopped.value).startswith("consumer numbers stopped: the database refused its work")
    assert "run `tidings db migrate`" in str(stopped.value)


async def test_database_errors_are_classified_once_for_both_stores(store: Store) -> None:
    # A race lost, a value that does not fit, a table that is not there: each caused for real
    await store.run("CREATE TABLE t_unique (k TEXT PRIMARY KEY)")
    await store.run("INSERT INTO t_unique (k) VALUES ('a')")
    with pytest.raises(Exception) as duplicate:
        await store.run("INSERT INTO t_unique (k) VALUES ('a')")
    with pytest.raises(Exception) as missing:
        await store.fetch("SELECT * FROM t_missing")
    assert (classify(duplicate.value), classify(missing.value)) == ("data", "permanent")
    assert classify(ValueError("not from the database")) is None


def test_a_sqlite_file_locked_by_another_process_is_transient(tmp_path: Path) -> None:
    # Given a SQLite file whose write lock another connection holds (as another process would)
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (k TEXT)")
    holder.execute("BEGIN IMMEDIATE")
    waiter = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        # When a write does not wait for it, then the error is one to wait out
        with pytest.raises(sqlite3.OperationalError) as busy:
            waiter.execute("INSERT INTO t (k) VALUES ('x')")
        assert classify(busy.value) == "transient"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        waiter.close()


async def test_a_refused_connection_is_transient() -> None:
    # Given a port nobody listens on
    port = _free_port()
    # When psycopg connects to it, then the error is one to wait out
    import psycopg

    with pytest.raises(psycopg.OperationalError) as refused:
        await psycopg.AsyncConnection.connect(f"postgresql://postgres@127.0.0.1:{port}/test", connect_timeout=2)
    assert classify(refused.value) == "transient"


# -- gone for a while: wait, then recover --------------------------------------------------------


class TcpProxy:
    """Forwards a local port to PostgreSQL; ``cut()`` drops every connection and refuses new ones until ``mend()``.

    While cut, it still accepts and at once closes each connection, counting them in ``refused``:
    a test can see that its worker really tried to reach the database meanwhile.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = _free_port()
        self.refused = 0
        self._cut = False
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def cut(self) -> None:
        self._cut = True
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def mend(self) -> None:
        self._cut = False

    async def close(self) -> None:
        await self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            self.refused += 1
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pipe = asyncio.create_task(self._pump(source, sink, (writer, up_writer)))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, both: tuple[asyncio.StreamWriter, ...]) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for writer in both:
                writer.close()


@pytest.fixture
async def proxied_postgres(postgres_store_factory: StoreFactory) -> AsyncIterator[tuple[Store, Store, TcpProxy]]:
    """A migrated schema, a store on it directly, and a store on it through a proxy that can be cut."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    direct = await postgres_store_factory()
    proxy = TcpProxy(("127.0.0.1", 5432))
    await proxy.start()
    schema = direct.schema  # type: ignore[attr-defined]
    url = POSTGRES_URL.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    through = await open_store(url, schema=schema)
    try:
        yield direct, through, proxy
    finally:
        with contextlib.suppress(Exception):
            await proxy.close()
        await through.close()


async def test_a_relay_cut_off_from_postgresql_waits_and_delivers_when_it_is_back(proxied_postgres: tuple[Store, Store, TcpProxy]) -> None:
    direct, through, proxy = proxied_postgres
    app = make_ticker_app(direct)
    relay = Relay(through, LocalBroker(through), idle_wait=0.05, rebalance_interval=0.2, backoff=_fast())
    task = asyncio.create_task(relay.run())
    try:
        await app.handle(Tick(ticker_id="before"))
        await eventually(lambda: _is_zero(undelivered(direct)), 10, "the first event is delivered")

        # When the database becomes unreachable (the relay tries, and is refused), while events are committed
        await proxy.cut()
        for _ in range(3):
            await app.handle(Tick(ticker_id="during"))
        await eventually(lambda: _true(proxy.refused >= 2), 20, "the relay tries to reach the database again")
        assert not task.done()

        # Then, once it is reachable again, the relay delivers them without a restart
        await proxy.mend()
        await eventually(lambda: _is_zero(undelivered(direct)), 40, "the events committed meanwhile are delivered")
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_consumer_cut_off_from_postgresql_waits_and_applies_when_it_is_back(
    proxied_postgres: tuple[Store, Store, TcpProxy],
) -> None:
    # Given a consumer whose database connections go through the proxy (its broker's log does not)
    direct, through, proxy = proxied_postgres
    await prepare(direct)
    broker = LocalBroker(direct, poll_interval=0.02)
    consumer = numbers_consumer(through, broker, rebalance_interval=0.1, replay_poll=0.1)
    task = asyncio.create_task(consumer.run())
    try:
        await publish(broker, [message("k", 1)])
        await eventually(lambda: _true(consumer.stats.applied == 1), 10, "the first message is applied")

        # When the database becomes unreachable (the consumer tries, and is refused) while messages arrive
        await proxy.cut()
        await publish(broker, [message("k", n) for n in (2, 3)])
        await eventually(lambda: _true(proxy.refused >= 2), 20, "the consumer tries to reach the database again")
        assert not task.done()

        # Then, once it is reachable again, it applies them, in order and once each
        await proxy.mend()
        await eventually(lambda: _true(consumer.stats.applied == 3), 40, "the messages that arrived meanwhile are applied")
        assert await effects(direct) == {"k": [1, 2, 3]}
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# -- helpers -------------------------------------------------------------------------------------


def _fast() -> Backoff:
    return Backoff(0.05, 0.3)


async def _is_zero(count: Awaitable[int]) -> bool:
    return await count == 0


async def _checkpoint_at_head(store: Store) -> bool:
    rows = await store.fetch("SELECT position FROM tidings_checkpoints WHERE name = 'projection:offers'")
    head = await store.fetch("SELECT max(position) FROM tidings_journal")
    return bool(rows) and int(rows[0][0]) == int(head[0][0])


async def _true(value: bool) -> bool:
    return value


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("broker", ["nats://127.0.0.1:4222", "local:"])
def test_tidings_relay_on_an_unmigrated_postgresql_schema_exits_with_the_cure(broker: str) -> None:
    # Given a PostgreSQL schema nobody migrated, and a reachable broker (or the local one, in that schema)
    require_service("PostgreSQL", "127.0.0.1", 5432)
    if broker.startswith("nats"):
        require_service("NATS", "127.0.0.1", 4222)
    url = f"{POSTGRES_URL}?options={quote('-c search_path=t_never_migrated')}"
    env = {**os.environ, "TIDINGS_DATABASE_URL": url, "TIDINGS_BROKER_URL": broker, "COLUMNS": "300"}

    # When an operator starts a relay on it
    done = subprocess.run([sys.executable, "-m", "tidings.cli", "relay"], env=env, capture_output=True, timeout=60)

    # Then it exits at once with an error that says what to run, instead of waiting forever
    output = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 2, output
    assert "stopped: the database refused its work" in output and "tidings db migrate" in output, output
