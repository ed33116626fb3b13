"""A numbered-messages model for consumer tests, and the ``tidings consume`` factory their child processes run.

Each key's messages carry 1, 2, 3… so order and exactly-once are checkable from the effects table.
Failures are steered through the database (``consumer_failing``), so a test can break and heal a
handler in another process. Environment of the child processes:

- ``CONSUMER_NAME`` (default ``numbers``), ``CONSUMER_SHARDS`` (default 1), ``CONSUMER_MEMBER`` (written
  with each effect, to see who applied what);
- ``STALL_ACKS=1``: every ack waits forever, so a test can kill the process after its commits and
  before its acks;
- ``DELIVERIES_LOG=path``: every delivery's event id is appended to that file (to see redeliveries);
- ``HANG_KEY=key``: the handler never returns for that key's messages (a process stuck while handling);
- ``MAX_DELIVERIES=n``: the consumer's ``Retries.max_deliveries``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec

from tidings import Application, Command, IntegrationEvent, StateStoredAggregate, UnitOfWork, ValidationError, applies
from tidings.brokers.base import Broker, Delivery, OutgoingMessage
from tidings.brokers.headers import envelope_to_headers
from tidings.domain.messages import DomainEvent
from tidings.messaging import Envelope, MessageRegistry, new_id, utc_now
from tidings.messaging.partitioning import partition_of
from tidings.runtime.backoff import Backoff
from tidings.runtime.consumer import Consumer, HandlerContext, Retries
from tidings.store import Store

TOPIC = "test.Numbered"


class Numbered(IntegrationEvent, name=TOPIC, version=2):
    """The n-th message of a key (v1 called the number ``seq``)."""

    key: str
    n: int
    note: str = ""


def registry() -> MessageRegistry:
    """A registry that reads Numbered v1 (``seq``) as v2 (``n``)."""
    reg = MessageRegistry([Numbered])

    @reg.upcaster(TOPIC, 1)
    def seq_becomes_n(data: dict[str, Any]) -> dict[str, Any]:
        data["n"] = data.pop("seq")
        return data

    return reg


def effects_ddl(store: Store) -> str:
    """The effects table: one row per applied message, in commit order by id."""
    serial = "BIGSERIAL PRIMARY KEY" if store.dialect == "postgresql" else "INTEGER PRIMARY KEY AUTOINCREMENT"
    return (
        f"CREATE TABLE IF NOT EXISTS consumer_effects (id {serial}, consumer TEXT NOT NULL, key TEXT NOT NULL, "
        "n INTEGER NOT NULL, event_id TEXT NOT NULL, member TEXT NOT NULL DEFAULT '')"
    )


async def prepare(store: Store) -> None:
    """Create the tables the model's handlers write and read."""
    await store.run(effects_ddl(store))
    await store.run("CREATE TABLE IF NOT EXISTS consumer_failing (key TEXT NOT NULL, n INTEGER NOT NULL)")


def message(
    key: str,
    n: int,
    *,
    version: int = 2,
    tenant: str | None = None,
    event_type: str = TOPIC,
    payload: bytes | None = None,
    correlation_id: str | None = None,
    event_id: str | None = None,
) -> OutgoingMessage:
    """The message the relay would publish for the n-th Numbered of ``key`` (anything about it can be spoiled)."""
    envelope = Envelope(
        event_id=event_id or new_id(),
        event_type=event_type,
        schema_version=version,
        occurred_at=utc_now(),
        aggregate_type="Counter",
        aggregate_id=key,
        aggregate_version=n,
        correlation_id=correlation_id or new_id(),
        causation_id=new_id(),
        tenant=tenant,
        source="numbers",
    )
    body = {"key": key, "seq": n} if version == 1 else {"key": key, "n": n}
    return OutgoingMessage(
        topic=TOPIC,
        key=key,
        partition=partition_of(key),
        event_id=envelope.event_id,
        headers=envelope_to_headers(msgspec.json.encode(envelope)),
        payload=msgspec.json.encode(body) if payload is None else payload,
    )


def numbered(keys: Sequence[str], count: int) -> list[OutgoingMessage]:
    """``count`` messages for each key, interleaved: k0#1, k1#1, …, k0#2, …"""
    return [message(key, n) for n in range(1, count + 1) for key in keys]


async def publish(broker: Broker, messages: Sequence[OutgoingMessage]) -> None:
    """Publish and insist every message was confirmed."""
    for start in range(0, len(messages), 500):
        results = await broker.publish(messages[start : start + 500])
        failed = [r for r in results if r is not None]
        assert not failed, f"publish failed: {failed[:3]}"


FAST_RETRIES = Retries(immediate=1, delayed=2, backoff=Backoff(0.02, 0.05))


def numbers_consumer(
    store: Store | None = None, broker: Broker | None = None, *, name: str = "numbers", member: str = "", **options: Any
) -> Consumer:
    """A consumer that records each Numbered in consumer_effects; it fails while (key, n) is in consumer_failing."""
    options.setdefault("retries", FAST_RETRIES)
    consumer = Consumer(name, store, broker, registry=registry(), **options)

    hang_key = os.environ.get("HANG_KEY")

    @consumer.handler(Numbered)
    async def record(event: Numbered, ctx: HandlerContext) -> None:
        if event.key == hang_key:
            await asyncio.Event().wait()  # a handler stuck for good: only killing the process ends it
        failing = await ctx.tx.fetch("SELECT 1 FROM consumer_failing WHERE key = ? AND n = ?", (event.key, event.n))
        if failing:
            raise RuntimeError(f"{event.key} #{event.n} is poisoned")
        ctx.write(
            "INSERT INTO consumer_effects (consumer, key, n, event_id, member) VALUES (?, ?, ?, ?, ?)",
            (ctx.consumer, event.key, event.n, ctx.envelope.event_id, member),
        )

    return consumer


async def effects(store: Store, consumer: str = "numbers") -> dict[str, list[int]]:
    """Each key's applied numbers, in commit order."""
    rows = await store.fetch("SELECT key, n FROM consumer_effects WHERE consumer = ? ORDER BY id", (consumer,))
    found: dict[str, list[int]] = {}
    for key, n in rows:
        found.setdefault(key, []).append(int(n))
    return found


# -- a tiny application, for commands run from handlers ------------------------------------------


class Tallied(DomainEvent):
    """A tally counted one more message."""

    total: int


class CountMessage(Command):
    """Count one message on a tally."""

    tally_id: str
    amount: int = 1

    def validate(self) -> None:
        if self.amount < 1:
            raise ValidationError("must be positive", field="amount", message_type="CountMessage")


class Tally(StateStoredAggregate):
    """Counts."""

    total: int = 0

    def count(self, amount: int) -> None:
        self.record(Tallied(total=self.total + amount))

    @applies
    def _tallied(self, event: Tallied) -> None:
        self.total = event.total


def tally_app(store: Store) -> Application:
    """An application with one command that counts on a Tally."""
    app = Application(store, name="tallies")

    @app.command_handler(CountMessage)
    async def count(command: CountMessage, uow: UnitOfWork) -> None:
        tally = await uow.find(Tally, command.tally_id) or uow.add(Tally(command.tally_id))
        tally.count(command.amount)

    return app


# -- the factory child processes run ---------------------------------------------------------------


class _Recording:
    """A broker that records each delivery's event id and may make every ack hang (to kill a process between commit and ack)."""

    def __init__(self, inner: Broker, log_path: str | None, stall: bool) -> None:
        self._inner = inner
        self._log_path = log_path
        self._stall = stall

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def subscribe(self, topics: Sequence[str], group: str) -> Any:
        return _RecordingSubscription(await self._inner.subscribe(topics, group), self._log_path, self._stall)


class _Hang:
    async def ack(self, delivery: Delivery) -> None:
        await asyncio.Event().wait()

    async def nack(self, delivery: Delivery, delay: float) -> None:
        await asyncio.Event().wait()


class _RecordingSubscription:
    def __init__(self, inner: Any, log_path: str | None, stall: bool) -> None:
        self._inner = inner
        self._log_path = log_path
        self._stall = stall

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self._deliveries()

    async def _deliveries(self) -> AsyncIterator[Delivery]:
        async for delivery in self._inner:
            if self._log_path:
                with open(self._log_path, "a") as log:
                    log.write(delivery.event_id + "\n")
            if self._stall:
                delivery._settle = _Hang()
            yield delivery

    async def close(self) -> None:
        await self._inner.close()


async def build(store: Store, broker: Broker) -> Consumer:
    """What ``tidings consume consumer_model:build`` runs in the tests' child processes."""
    await prepare(store)
    wrapped = _Recording(broker, os.environ.get("DELIVERIES_LOG"), os.environ.get("STALL_ACKS") == "1")
    return numbers_consumer(
        store,
        wrapped,  # type: ignore[arg-type]
        name=os.environ.get("CONSUMER_NAME", "numbers"),
        member=os.environ.get("CONSUMER_MEMBER", ""),
        shards=int(os.environ.get("CONSUMER_SHARDS", "1")),
        retries=Retries(
            immediate=1, delayed=2, backoff=Backoff(0.02, 0.05), max_deliveries=int(os.environ.get("MAX_DELIVERIES", "20"))
        ),
        concurrency=4,
        batch_size=50,
        rebalance_interval=0.3,
        replay_poll=0.3,
    )
