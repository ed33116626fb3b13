"""The composition root of the fulfilment migration: one PostgreSQL database, one broker, and every part running.

The legacy OMS tables, the routing table and tidings' store share one database with
``wal_level=logical`` (the demo starts a private cluster for it). ``Fulfilment`` runs:

    cdc        the slot over ``oms_orders`` and the routing table → the ACL → the outbox
    relay      the outbox → the broker (``local:`` by default; ``nats://…`` works the same)
    shipping   Shipping's consumer of the contract

This is the only module that knows the legacy OMS, Ordering and Shipping; they know only
``contracts`` and ``cutover``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from examples.fulfilment.cutover import ROUTING_DDL, ROUTING_TABLE, switch
from examples.fulfilment.legacy.acl import LEGACY_TABLE, LegacyAcl
from examples.fulfilment.legacy.oms import LEGACY_DDL, LegacyOms
from examples.fulfilment.ordering.application import ordering_application
from examples.fulfilment.shipping.application import ensure_tables, shipping_application, shipping_consumer
from tidings.app import Application
from tidings.brokers import Broker, open_broker
from tidings.cdc import CdcRunner, SlotReader
from tidings.runtime import Consumer, Relay
from tidings.store import Store, open_store

__all__ = ["SLOT", "Fulfilment"]

log = logging.getLogger("examples.fulfilment")

#: The logical replication slot the ACL reads.
SLOT = "oms_cdc"


class Fulfilment:
    """The retailer's fulfilment on one logical-decoding PostgreSQL database and one broker."""

    def __init__(self, database_url: str, broker_url: str = "local:", *, poll_interval: float = 0.05) -> None:
        self.database_url = database_url
        self.broker_url = broker_url
        self.poll_interval = poll_interval
        self.store: Store = None  # type: ignore[assignment]  # set by open()
        self.broker: Broker = None  # type: ignore[assignment]
        self.legacy = LegacyOms(database_url)
        self.acl = LegacyAcl()
        self.ordering: Application = None  # type: ignore[assignment]
        self.shipping: Application = None  # type: ignore[assignment]
        self.consumer: Consumer = None  # type: ignore[assignment]
        self.relay: Relay = None  # type: ignore[assignment]
        self.cdc: CdcRunner = None  # type: ignore[assignment]
        self._stop = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[Any]] = {}

    async def open(self) -> Fulfilment:
        """Create the legacy and routing tables if missing, open the store (migrated) and broker, set up the slot."""
        async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as conn:
            for statement in (*LEGACY_DDL, *ROUTING_DDL):
                await conn.execute(statement)
        self.store = await open_store(self.database_url, migrate=True)
        self.broker = await open_broker(self.broker_url, store=self.store)
        await ensure_tables(self.store)
        self.ordering = ordering_application(self.store)
        self.shipping = shipping_application(self.store)
        self.consumer = shipping_consumer(self.shipping, self.store).attach(self.store, self.broker)
        self.relay = Relay(self.store, self.broker, idle_wait=0.05)
        reader = SlotReader(self.database_url, SLOT, [LEGACY_TABLE, ROUTING_TABLE])
        await reader.setup()
        self.cdc = CdcRunner(self.store, reader, self.acl.capture, poll_interval=self.poll_interval)
        return self

    async def start(self) -> None:
        """Load the ACL's routing, then run CDC, the relay and Shipping's consumer as tasks; returns once subscribed."""
        async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as conn:
            await self.acl.load(conn)
        self._stop = asyncio.Event()
        self._tasks = {
            "cdc": asyncio.create_task(self.cdc.run(self._stop), name="cdc"),
            "relay": asyncio.create_task(self.relay.run(self._stop), name="relay"),
            "shipping": asyncio.create_task(self.consumer.run(self._stop), name="shipping"),
        }
        while not self.consumer.subscribed:
            self.check()
            await asyncio.sleep(0.02)

    def check(self) -> None:
        """Raise the error of a part that ended before it was stopped."""
        for name, task in self._tasks.items():
            if task.done() and not self._stop.is_set():
                error = task.exception() if not task.cancelled() else None
                raise RuntimeError(f"fulfilment part {name} ended unexpectedly: {error!r}") from error

    async def stop(self) -> None:
        """Stop every running part and wait for it."""
        self._stop.set()
        tasks, self._tasks = list(self._tasks.values()), {}
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=10)
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        """Stop, then close the slot reader, the broker and the store (the slot itself stays: ``tidings cdc drop``)."""
        await self.stop()
        if self.cdc is not None:
            await self.cdc.reader.close()
        if self.broker is not None:
            with contextlib.suppress(Exception):
                await self.broker.close()
        if self.store is not None:
            await self.store.close()

    async def __aenter__(self) -> Fulfilment:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def switch(self, market: str, producer: str) -> None:
        """Cut ``market`` over: ``legacy`` → ``both`` → ``ordering`` (a row change the ACL reads in WAL order)."""
        async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as conn:
            await switch(conn, market, producer)

    async def caught_up(self) -> Callable[[], Awaitable[bool]]:
        """A condition for :meth:`settle`: CDC has read (and committed) everything the source committed until now.

        The slot only moves after the outbox commit, and an idle runner moves it to the WAL position
        it read before an empty peek, so ``confirmed_flush_lsn`` reaching today's position means
        nothing committed before this call is still waiting to be captured.
        """
        async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as conn:
            target = (await (await conn.execute("SELECT pg_current_wal_lsn()")).fetchone())[0]  # type: ignore[index]

        async def condition() -> bool:
            async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as conn:
                row = await (await conn.execute(
                    "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s", (target, SLOT)
                )).fetchone()  # fmt: skip
            return bool(row and row[0])

        return condition

    async def settle(self, condition: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> bool:
        """Wait until ``await condition()`` holds (False after ``timeout`` s), raising if a part crashed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            self.check()
            if await condition():
                return True
            await asyncio.sleep(0.05)
        return False
