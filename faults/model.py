"""The harness's workload: tickers whose every command advances a per-key sequence, and the consumer that applies them.

A ``Tick`` command carries an id chosen by the writer (``cmd_id``) and advances one ticker by one;
its integration event ``faults.Ticked`` carries (key, n, cmd_id). Because n is the ticker's state,
a key's committed events are numbered 1, 2, 3… with no gap, so order and loss are checkable, and
the cmd_id ties every effect back to a command a writer attempted.

``build`` is what ``tidings consume faults.model:build`` runs in the consumer processes. Their
environment switches on the harness's interference:

- ``FAULTS_DELIVERIES=path``: each delivery's group and event id are appended there (what the broker delivered);
- ``FAULTS_ACK_DELAY=seconds``: some acks wait up to that long after the commit, so a kill lands
  between commit and ack often;
- ``FAULTS_CHAOS_SEED=n``: deliveries pass through ``Chaos``, which shuffles them across keys and
  delivers some twice;
- ``FAULTS_SHARDS``, ``FAULTS_MEMBER``: the consumer's shards and this process's name in its effects.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

from tidings import Application, Command, DomainEvent, IntegrationEvent, StateStoredAggregate, ValidationError, applies
from tidings.app import UnitOfWork
from tidings.brokers.base import Broker, Delivery
from tidings.messaging import Envelope, MessageRegistry
from tidings.runtime.backoff import Backoff
from tidings.runtime.consumer import Consumer, HandlerContext, Retries
from tidings.store import Store

TOPIC = "faults.Ticked"
TENANT = "faults"
CONSUMER = "faults"


class Ticked(DomainEvent):
    """A ticker advanced to ``n`` because of command ``cmd_id``."""

    n: int
    cmd_id: str
    padding: str = ""


class Tick(Command):
    """Advance one ticker by one; ``fail`` makes the handler raise after recording (a rollback)."""

    key: str
    cmd_id: str
    fail: bool = False
    padding: str = ""

    def validate(self) -> None:
        if not self.key.strip():
            raise ValidationError("a ticker needs a non-blank key", field="key", message_type="Tick")


class Untick(Command):
    """A command no handler exists for (the harness sends it to see it refused)."""

    key: str


class TickPublished(IntegrationEvent, name=TOPIC):
    """Public form of a tick: the ticker, its number, and the command that caused it."""

    key: str
    n: int
    cmd_id: str
    padding: str = ""


class Ticker(StateStoredAggregate):
    """Counts its ticks."""

    n: int = 0

    def tick(self, cmd_id: str, padding: str) -> None:
        self.record(Ticked(n=self.n + 1, cmd_id=cmd_id, padding=padding))

    @applies
    def _ticked(self, event: Ticked) -> None:
        self.n = event.n


class RolledBack(RuntimeError):
    """The handler failed on purpose after recording: nothing of the command may ever be published."""


def make_app(store: Store) -> Application:
    """The tickers' application: Tick publishes one TickPublished per committed tick."""
    app = Application(store, name="faults")

    @app.command_handler(Tick)
    async def tick(command: Tick, uow: UnitOfWork) -> None:
        ticker = await uow.find(Ticker, command.key) or uow.add(Ticker(command.key))
        ticker.tick(command.cmd_id, command.padding)
        if command.fail:
            raise RolledBack(f"command {command.cmd_id} failed after recording, on purpose")

    @app.translator(Ticked)
    def publish(event: Ticked, envelope: Envelope) -> TickPublished:
        return TickPublished(key=envelope.aggregate_id or "", n=event.n, cmd_id=event.cmd_id, padding=event.padding)

    return app


EFFECTS_DDL = (
    "CREATE TABLE IF NOT EXISTS faults_effects (id BIGSERIAL PRIMARY KEY, key TEXT NOT NULL, n INTEGER NOT NULL, "
    "event_id TEXT NOT NULL, cmd_id TEXT NOT NULL, member TEXT NOT NULL DEFAULT '', applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
)


def registry() -> MessageRegistry:
    """The consumer's registry: it reads TickPublished v1 only."""
    return MessageRegistry([TickPublished])


FAST_RETRIES = Retries(immediate=1, delayed=2, backoff=Backoff(0.05, 0.2))


def consumer(store: Store | None = None, broker: Broker | None = None, *, shards: int = 1, member: str = "") -> Consumer:
    """The consumer that applies each tick as one effect row, in the inbox's transaction, for tenant ``faults``."""
    ticks = Consumer(
        CONSUMER, store, broker, registry=registry(), tenant=TENANT, shards=shards, retries=FAST_RETRIES,
        concurrency=4, batch_size=50, rebalance_interval=0.5, replay_poll=1.0,
    )  # fmt: skip

    @ticks.handler(TickPublished)
    async def apply(event: TickPublished, ctx: HandlerContext) -> None:
        ctx.write(
            "INSERT INTO faults_effects (key, n, event_id, cmd_id, member) VALUES (?, ?, ?, ?, ?)",
            (event.key, event.n, ctx.envelope.event_id, event.cmd_id, member),
        )

    return ticks


# -- interference inside consumer processes --------------------------------------------------------


class Interfering:
    """A broker whose subscriptions log deliveries, delay some acks, or shuffle and duplicate (Chaos)."""

    def __init__(self, inner: Broker, deliveries: str | None, ack_delay: float, chaos_seed: int | None) -> None:
        self._inner = inner
        self._deliveries = deliveries
        self._ack_delay = ack_delay
        self._chaos_seed = chaos_seed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def subscribe(self, topics: Sequence[str], group: str) -> Any:
        inner = await self._inner.subscribe(topics, group)
        if self._chaos_seed is not None:
            inner = Chaos(inner, random.Random(f"{self._chaos_seed}:{group}:{os.getpid()}"), self._deliveries)
        return _Interfered(inner, group, self._deliveries, self._ack_delay)


class _DelayedSettle:
    """Acks after a pause (some of them), so a kill lands between the consumer's commit and its ack."""

    def __init__(self, inner: Any, delay: float) -> None:
        self._inner = inner
        self._delay = delay

    async def ack(self, delivery: Delivery) -> None:
        if random.random() < 0.2:
            await asyncio.sleep(random.random() * self._delay)
        await self._inner.ack(delivery)

    async def nack(self, delivery: Delivery, delay: float) -> None:
        await self._inner.nack(delivery, delay)


class _Interfered:
    def __init__(self, inner: Any, group: str, deliveries: str | None, ack_delay: float) -> None:
        self._inner = inner
        self._group = group
        self._log = open(deliveries, "a", buffering=1) if deliveries else None  # noqa: SIM115 - lives with the subscription
        self._ack_delay = ack_delay

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self._deliveries()

    async def _deliveries(self) -> AsyncIterator[Delivery]:
        async for delivery in self._inner:
            if self._log is not None:
                self._log.write(f"{self._group} {delivery.event_id}\n")
            if self._ack_delay > 0 and delivery._settle is not None:
                delivery._settle = _DelayedSettle(delivery._settle, self._ack_delay)
            yield delivery

    async def close(self) -> None:
        await self._inner.close()


class Chaos:
    """A subscription that shuffles deliveries across keys (never within one) and delivers some a second time later.

    Its contract: a key's messages come in the broker's order; a duplicate of one may come at any
    later point, also after the key's newer messages (a late redelivery). The duplicates carry no
    settle of their own (acking one is a no-op), like a redelivery of something already acked.
    """

    def __init__(self, inner: Any, rng: random.Random, log: str | None, *, window: int = 40, duplicate_rate: float = 0.15) -> None:
        self._inner = inner
        self._rng = rng
        self._window = window
        self._duplicate_rate = duplicate_rate
        self._queue: asyncio.Queue[Delivery | BaseException | None] = asyncio.Queue()
        self._later: list[tuple[int, Delivery]] = []
        self._round = 0
        self._log = open(log + ".dups", "a", buffering=1) if log else None  # noqa: SIM115

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self._deliveries()

    async def _pump(self) -> None:
        try:
            async for delivery in self._inner:
                await self._queue.put(delivery)
            await self._queue.put(None)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await self._queue.put(exc)

    async def _deliveries(self) -> AsyncIterator[Delivery]:
        pump = asyncio.get_running_loop().create_task(self._pump())
        try:
            ended: BaseException | None = None
            finished = False
            while not finished:
                batch: list[Delivery] = []
                try:
                    first = await asyncio.wait_for(self._queue.get(), 0.2)
                except TimeoutError:
                    first = None if not self._later else _NOTHING
                    if first is None:
                        continue
                items = [first]
                # Gather what else arrives within a moment, up to the window.
                while len(items) < self._window:
                    try:
                        items.append(await asyncio.wait_for(self._queue.get(), 0.02))
                    except TimeoutError:
                        break
                for item in items:
                    if item is None:
                        finished = True
                    elif isinstance(item, BaseException):
                        ended, finished = item, True
                    elif isinstance(item, Delivery):
                        batch.append(item)
                for delivery in self._shuffled(batch):
                    yield delivery
            if ended is not None:
                raise ended
        finally:
            pump.cancel()

    def _shuffled(self, batch: list[Delivery]) -> list[Delivery]:
        """A random interleaving of the batch's keys, each key in order, plus the duplicates now due."""
        self._round += 1
        lanes: dict[str, deque[Delivery]] = {}
        for delivery in batch:
            lanes.setdefault(delivery.key, deque()).append(delivery)
            if self._rng.random() < self._duplicate_rate:
                self._later.append((self._round + self._rng.randint(1, 3), replace(delivery, _settle=None)))
        due = [d for at, d in self._later if at <= self._round]
        self._later = [(at, d) for at, d in self._later if at > self._round]
        for duplicate in due:
            # A duplicate is a lane of its own: it may overtake nothing of its key that it has not
            # already been overtaken by, which is what a late redelivery looks like.
            lanes.setdefault(f"\0dup{id(duplicate)}", deque()).append(duplicate)
            if self._log is not None:
                self._log.write(f"{duplicate.event_id}\n")
        out: list[Delivery] = []
        keys = list(lanes)
        while keys:
            key = self._rng.choice(keys)
            out.append(lanes[key].popleft())
            if not lanes[key]:
                keys.remove(key)
        return out

    async def close(self) -> None:
        await self._inner.close()


_NOTHING = object()


async def build(store: Store, broker: Broker) -> Consumer:
    """What ``tidings consume faults.model:build`` runs: the tick consumer, behind the interference the env asks for."""
    await store.run(EFFECTS_DDL)
    seed = os.environ.get("FAULTS_CHAOS_SEED")
    wrapped = Interfering(
        broker, os.environ.get("FAULTS_DELIVERIES"), float(os.environ.get("FAULTS_ACK_DELAY", "0")), int(seed) if seed else None
    )
    return consumer(store, wrapped, shards=int(os.environ.get("FAULTS_SHARDS", "1")), member=os.environ.get("FAULTS_MEMBER", ""))  # type: ignore[arg-type]
