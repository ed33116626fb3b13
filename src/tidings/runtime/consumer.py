"""Consumers: apply every message from a broker exactly once, in order per key; dead-letter what cannot be applied.

A consumer has a name (its broker group, its inbox, its dead letters), a store and a broker::

    consumer = Consumer("billing-usage", store, broker, concurrency=8)

    @consumer.handler(LicensePurchaseConfirmed)
    async def open_account(event: LicensePurchaseConfirmed, ctx: HandlerContext) -> None:
        await ctx.handle(billing, OpenAccount(account_id=event.buyer_id))   # same transaction
        ctx.write("INSERT INTO seen_licenses (license_id) VALUES (?)", (event.license_id,))

    # Projections and sagas register plain callables of (envelope, event, tx):
    consumer.route(LicensePurchaseConfirmed, projection.apply)
    consumer.route("licensing.LicenseRevoked", saga.on_revoked)   # by name
    consumer.route(ANY, audit_log.append)                          # every message of the topics

    await consumer.run(stop)              # or: tidings consume myapp.consumers:billing

For each delivery: the envelope is read from the headers and the payload is decoded into the
class the handler expects (upcast from older versions by the registry). Then, in ONE
``store.transaction()``: the inbox row (consumer, event id) is inserted — a message whose row
exists is a redelivery and is skipped — and every handler and route for its type runs; deferred
writes (``ctx.write``) are flushed; the transaction commits; only then is the message acked. A
crash anywhere before the commit leaves no trace and the broker delivers again; a crash between
commit and ack delivers again too, and the inbox skips it.

Order and concurrency. Messages of one partition key are applied strictly in delivery order;
different keys run concurrently, in up to ``concurrency`` transactions at once, each applying a
batch of up to ``batch_size`` messages (several keys, and consecutive messages of one key) — one
commit and one inbox statement per batch is what makes the throughput (see bench/consume.py).
Several processes of one consumer share the work through ``shards``: each shard is a broker group
of its own (``name.sN``, or ``name`` for one shard) read by one process at a time.

Failures. A handler that raises is retried at once (``Retries.immediate``), then with exponential
backoff and jitter (``Retries.delayed``) while the message stays held, un-acked, by this process;
then it is dead-lettered: the message, its error and traceback go to ``tidings_dead_letters`` with
its inbox row, in one transaction, and it is acked. Errors no retry can fix go there at once:
undecodable headers or payload, an unknown type, a version this code cannot read, failed validation,
a wrong tenant, a payload over ``max_message_bytes``, a header or key no column can hold (checked by
:mod:`tidings.runtime.incoming` before anything is written), an event id applied before with a
different payload (the inbox records a digest of each payload). A transaction the store fails twice
the same way (a value it refuses, not a handler's own error) dead-letters its message
(docs/decisions/0017). With ``on_dead="park"`` (the default) the later messages of a dead message's key are
stored as ``held`` behind it, so the key's order survives; ``"skip"`` lets them through. Other keys
keep flowing either way. ``tidings dlq replay ID`` asks the running consumer to apply a dead
message again (once: the status change commits with the effects), and then it releases the key's
held messages in order. See docs/decisions/0008-consumer-retries-and-dead-letters.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import time
import traceback as traceback_module
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from tidings.brokers.base import Broker, BrokerUnavailable, Delivery, OutgoingMessage, Subscription
from tidings.brokers.headers import headers_to_envelope
from tidings.telemetry import tracing
from tidings.telemetry.metrics import instruments
from tidings.telemetry.semconv import messaging_system_of
from tidings.domain.errors import TidingsError, ValidationError
from tidings.domain.messages import Message
from tidings.messaging.contracts import topic_of
from tidings.messaging.envelope import Envelope, MessageContext, utc_now
from tidings.messaging.errors import MalformedMessage, MessageError, MessageTooLarge, UnknownMessageType
from tidings.messaging.ids import new_id
from tidings.messaging.personal import PersonalDataError, is_sealed, master_key, personal_fields, scrubbed
from tidings.messaging.registry import MessageRegistry, registry_of
from tidings.runtime.backoff import Backoff
from tidings.runtime.dead_letters import DeadLetter, DeadLetters, NewDeadLetter, importance_of
from tidings.runtime.incoming import (
    ReusedEventId,
    check_envelope,
    check_metadata,
    payload_digest,
    usable_event_id,
)
from tidings.runtime.shards import ShardOwnership, shard_of, shard_ownership
from tidings.store.base import Store
from tidings.store.errors import PermanentDatabaseError, classify, is_transient, is_unavailable
from tidings.store.names import component_name
from tidings.store.subject_keys import SubjectKeys, check_master_key

if TYPE_CHECKING:
    from tidings.app.application import Application, CommandResult
    from tidings.domain.messages import Command

__all__ = [
    "ANY",
    "Consumer",
    "ConsumerStats",
    "HandlerContext",
    "Retries",
    "RouteFunction",
    "WrongTenant",
]

log = logging.getLogger("tidings.consumer")

#: Route target meaning "every message on the consumer's topics", whatever its type.
ANY = "*"

RouteFunction = Callable[[Envelope, Any, Store], Awaitable[None]]
HandlerFunction = Callable[[Any, "HandlerContext"], Awaitable[None]]

_envelope_encoder = msgspec.json.Encoder()
#: An ack that took longer than this waited for something (the network): ack the rest of its batch at once.
_QUICK_ACK_S = 0.0002
#: The longest wait between attempts to write a dead letter the store keeps refusing.
_UNWRITABLE_CAP_S = 60.0


class WrongTenant(MessageError):
    """A message for another tenant reached a consumer configured for one tenant."""

    def __init__(self, consumer: str, expected: str, actual: str | None) -> None:
        self.expected = expected
        self.actual = actual
        carried = f"tenant {actual!r}" if actual else "no tenant"
        super().__init__(
            f"consumer {consumer!r} serves tenant {expected!r} but the message carries {carried} — "
            "check the producer's tenant or the topic this consumer subscribes to"
        )


@dataclass(frozen=True, slots=True)
class Retries:
    """How often a failing handler is retried before its message is dead-lettered.

    ``immediate`` re-runs follow the first failure at once; then ``delayed`` re-runs wait
    ``backoff.delay(n)`` each (exponential, jittered). Meanwhile the message stays held, un-acked,
    and its key waits behind it. A message the broker delivered more than ``max_deliveries`` times
    (the consumer kept dying while handling it) is dead-lettered without another run.
    """

    immediate: int = 2
    delayed: int = 5
    backoff: Backoff = Backoff(0.5, 30.0)
    max_deliveries: int = 20

    @property
    def window(self) -> float:
        """The longest time, in seconds, from a message's first failure to its dead-lettering."""
        return sum(min(self.backoff.cap, self.backoff.base * 2 ** (n - 1)) for n in range(1, self.delayed + 1))

    @property
    def runs(self) -> int:
        """How many times the handler runs, at most, before the message is dead-lettered."""
        return 1 + self.immediate + self.delayed


@dataclass(slots=True)
class ConsumerStats:
    """Counters of what a consumer did since it started (for tests, logs and benchmarks)."""

    applied: int = 0
    duplicates: int = 0
    ignored: int = 0
    retried: int = 0
    dead: int = 0
    held: int = 0
    replayed: int = 0
    batches: int = 0
    #: Transactions that failed and were rolled back (a handler raised, a write or the commit failed).
    rollbacks: int = 0


class HandlerContext:
    """What a handler gets besides the event: the envelope, the open transaction, and commands in it.

    Attributes:
        envelope: the message's metadata — ids, type, version, aggregate, correlation, tenant, source.
        tx: the consumer's Store, inside this message's transaction: ``await ctx.tx.run(...)`` /
            ``fetch(...)`` (``?`` placeholders) commit with the inbox row or not at all. The same
            as ``await ctx.execute(...)``; see also ``ctx.write`` (queued) and ``ctx.connection()``.
        topic: the topic the message arrived on.
        key: its partition key (messages of one key are applied in order).
        attempt: 1 on the first run of the handler for this message, 2 on the first retry, …
        consumer: the consumer's name.
    """

    __slots__ = ("envelope", "tx", "topic", "key", "attempt", "consumer", "_writes")

    def __init__(self, consumer: Consumer, envelope: Envelope, topic: str, key: str, attempt: int, writes: _Writes) -> None:
        #: The message's metadata: ids, type, version, aggregate, correlation, tenant, source.
        self.envelope = envelope
        #: The store, inside this message's transaction: statements run here commit with the inbox row.
        self.tx: Store = consumer.store
        self.topic = topic
        self.key = key
        #: 1 on the first run of the handler for this message, 2 on the first retry, and so on.
        self.attempt = attempt
        self.consumer = consumer.name
        self._writes = writes

    @property
    def context(self) -> MessageContext:
        """The MessageContext for commands caused by this message: correlation kept, the command's cause = this message."""
        env = self.envelope
        return MessageContext(
            correlation_id=env.correlation_id, causation_id=env.event_id, user_id=env.user_id, tenant=env.tenant
        )

    async def handle(self, app: Application, command: Command, *, retries: int = 0) -> CommandResult:
        """Run ``command`` on ``app`` inside this message's transaction (its commit becomes a savepoint).

        The chain stays whole: the command is caused by this message and its events by the
        command (``causation_id`` = ``CommandResult.command_id``; the events' envelopes also
        carry ``command_type`` and ``command_causation_id`` = this message's id), with this
        message's correlation id; ``tidings trace`` prints message → command → events.
        """
        if app.store is not self.tx:
            raise ValueError(
                f"application {app.name!r} writes to another Store object than consumer {self.consumer!r}, so its "
                "commit could not join this message's transaction — build the Application on the consumer's store"
            )
        return await app.handle(command, context=self.context, retries=retries)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one SQL statement (``?`` placeholders, either store) now, in this message's transaction; its rows.

        It commits with the inbox row, or not at all (a handler that raises leaves none of it).
        Statements queued with :meth:`write` run later, when the batch is flushed.
        """
        return await self.tx.fetch(sql, params)

    async def connection(self) -> Any:
        """The database connection of this message's transaction (sqlite3 or psycopg), for a driver-level API."""
        return await self.tx.connection()

    def write(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Queue a statement (``?`` placeholders) to run in this transaction before it commits.

        Queued statements of a batch run together (consecutive ones with the same SQL as one
        executemany), which saves a round trip per message; use ``await ctx.tx.run(...)`` instead
        when the handler must read what it wrote.
        """
        self._writes.add(sql, params)


class _Writes:
    """Statements queued by ``ctx.write`` during one transaction, flushed in order before it commits."""

    __slots__ = ("groups",)

    def __init__(self) -> None:
        self.groups: list[tuple[str, list[Sequence[Any]]]] = []

    def add(self, sql: str, params: Sequence[Any]) -> None:
        if self.groups and self.groups[-1][0] == sql:
            self.groups[-1][1].append(params)
        else:
            self.groups.append((sql, [params]))

    async def flush(self, store: Store) -> None:
        groups, self.groups = self.groups, []
        for sql, rows in groups:
            if len(rows) == 1:
                await store.run(sql, rows[0])
            else:
                await store.run_many(sql, rows)


@dataclass(slots=True)
class _Route:
    fn: Callable[..., Awaitable[None]]
    style: Literal["handler", "route"]


@dataclass(slots=True, eq=False)
class _Verdict:
    """Why a message goes to the dead letters without (another) run of its handlers."""

    reason: str
    error: str
    traceback: str
    attempts: int


@dataclass(slots=True, eq=False)
class _Item:
    """One delivery on its way through a key's lane."""

    delivery: Delivery
    shard: int
    event_id: str
    envelope: Envelope | None = None
    event: Any = None
    routes: Sequence[_Route] = ()
    verdict: _Verdict | None = None
    #: The payload's digest, recorded with the inbox row: a reused event id with other bytes is not a redelivery.
    digest: int = 0
    reused_digest: int = 0
    failures: int = 0
    #: How the last transaction of this item failed outside its handlers (type, SQLSTATE, message).
    last_failure: str | None = None
    #: How many times writing this item's dead letter failed.
    unwritable: int = 0
    solo: bool = False
    error: BaseException | None = None
    trace: str = ""
    release: bool = False  # not a delivery: "replay or release this key's dead letters"
    #: Holds sealed personal fields: decoded in its batch, once the batch's subject keys are fetched.
    sealed: bool = False
    #: The plaintext of its personal fields, scrubbed from error texts and tracebacks.
    personal: tuple[str, ...] = ()


class _ItemFailed(Exception):
    """A handler raised while applying ``item`` inside a batch's transaction."""

    def __init__(self, item: _Item, error: BaseException) -> None:
        super().__init__(str(error))
        self.item = item
        self.error = error


class Consumer:
    """Applies messages of some topics to a store exactly once each, in order per key, with retries and dead letters.

    Attributes:
        stats: a ConsumerStats with what this process did since it started: messages applied,
            duplicates skipped (inbox), ignored (a type with no handler), retried, dead-lettered,
            held behind a dead one, replayed, and batches committed. For tests, logs and benchmarks.
        registry: the MessageRegistry it decodes with — its store's shared one unless given one.
        store, broker, name: where it reads and writes; the name is its broker group, inbox and
            dead letters.
    """

    def __init__(
        self,
        name: str,
        store: Store | None = None,
        broker: Broker | None = None,
        *,
        topics: Sequence[str] | None = None,
        registry: MessageRegistry | None = None,
        concurrency: int = 8,
        batch_size: int = 200,
        linger: float = 0.005,
        prefetch: int | None = None,
        retries: Retries = Retries(),
        not_retryable: tuple[type[BaseException], ...] = (),
        on_dead: Literal["park", "skip"] = "park",
        tenant: str | None = None,
        shards: int = 1,
        handover_wait: float | None = None,
        inbox_retention: timedelta | None = timedelta(days=7),
        prune_interval: float = 60.0,
        prune_batch: int = 5_000,
        replay_poll: float = 2.0,
        rebalance_interval: float = 1.0,
        dead_letter_topic: str | None = None,
        shutdown_timeout: float = 30.0,
        member_id: str | None = None,
        max_message_bytes: int | None = 256 * 1024,
    ) -> None:
        # The name is the broker group, the inbox's and dead letters' key, and appears in logs.
        component_name(name, "consumer name")
        if on_dead not in ("park", "skip"):
            raise ValueError(f"on_dead must be 'park' or 'skip', got {on_dead!r}")
        if concurrency < 1 or not 1 <= batch_size <= 5000:
            raise ValueError(
                f"concurrency must be at least 1 and batch_size between 1 and 5000, got {concurrency} and {batch_size}"
            )
        if shards < 0:
            raise ValueError(f"shards must be 0 (no coordination between processes) or more, got {shards}")
        if inbox_retention is not None and inbox_retention.total_seconds() <= retries.window:
            raise ValueError(
                f"inbox_retention of {inbox_retention.total_seconds():g} s is not longer than the longest retry window "
                f"({retries.window:g} s: {retries.delayed} delayed retries, backoff base {retries.backoff.base:g} s, cap "
                f"{retries.backoff.cap:g} s); a redelivery after its inbox row was pruned would be applied twice — "
                "raise inbox_retention or shorten the retries"
            )
        self.name = name
        self.store: Store = store  # type: ignore[assignment]  # may be attached later (tidings consume)
        self.broker: Broker = broker  # type: ignore[assignment]
        # Without a registry of its own it shares its store's (that of the applications on the
        # same store): an upcaster registered on the application reads old messages here too.
        self._own_registry = registry is not None
        self.registry = registry if registry is not None else (registry_of(store) if store is not None else MessageRegistry())
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.linger = linger
        # Held messages cost the broker keep-alives (NATS: a progress note each every ack_wait/3),
        # so hold about what the transactions in flight can take, not more.
        self.prefetch = prefetch or max(500, concurrency * batch_size)
        self.retries = retries
        self.not_retryable = (MessageError, ValidationError, *not_retryable)
        self.on_dead = on_dead
        self.tenant = tenant
        self.shards = shards
        self.handover_wait = handover_wait
        self.inbox_retention = inbox_retention
        self.prune_interval = prune_interval
        self.prune_batch = prune_batch
        self.replay_poll = replay_poll
        self.rebalance_interval = rebalance_interval
        self.dead_letter_topic = dead_letter_topic
        # The Application refuses to write payloads over 256 KiB; one that arrives anyway was not
        # written by a tidings producer with the same limit, and is quarantined unread (None: no limit).
        self.max_message_bytes = max_message_bytes
        self.shutdown_timeout = shutdown_timeout
        self.member_id = member_id or f"{socket.gethostname()}-{os.getpid()}-{new_id()[-6:]}"
        self.stats = ConsumerStats()
        self._topics = list(topics) if topics else None
        self._routes: dict[str, list[_Route]] = {}
        self._default_topics: set[str] = set()
        self._class_names: set[str] = set()
        self._any: list[_Route] = []
        self._state = "starting"
        self._reset_runtime()

    # -- registration --------------------------------------------------------------------------

    def handler(self, event_type: type[Message]) -> Callable[[HandlerFunction], HandlerFunction]:
        """Decorator: ``async fn(event, ctx)`` applies ``event_type`` (decoded, upcast to this class's version)."""

        def register(fn: HandlerFunction) -> HandlerFunction:
            self._add(event_type, _Route(_require_async(fn), "handler"))
            return fn

        return register

    def route(self, target: type[Message] | str, fn: RouteFunction) -> RouteFunction:
        """Register ``async fn(envelope, event, tx)`` for a message class, a message name, or ANY.

        For a name the registry does not know (and for ANY), ``event`` is the payload as plain
        JSON data; for a known name it is the decoded, upcast message.
        """
        self._add(target, _Route(_require_async(fn), "route"))
        return fn

    def _add(self, target: type[Message] | str, route: _Route) -> None:
        if target == ANY:
            self._any.append(route)
            return
        if isinstance(target, str):
            name = target
        elif isinstance(target, type) and issubclass(target, Message):
            self.registry.register(target)
            name = target.message_name
            # A contract that names its topic is read from there, as the producer publishes it.
            self._default_topics.add(topic_of(target))
            self._class_names.add(name)
        else:
            raise TypeError(f"route a message class, a message name or ANY, not {target!r}")
        self._routes.setdefault(name, []).append(route)

    @property
    def topics(self) -> list[str]:
        """The topics this consumer subscribes to: as given, or those of the messages it handles.

        A message class's topic is its declared ``topic=`` when it has one (as the unit of work
        publishes it), else its message name; a route by name subscribes to that name.
        """
        if self._topics:
            return self._topics
        return sorted(self._default_topics | {name for name in self._routes if name not in self._class_names})

    @property
    def in_flight(self) -> int:
        """Messages received and not yet acked (queued, being applied, waiting for a retry, or acking)."""
        return self._in_flight

    @property
    def subscribed(self) -> bool:
        """Whether every shard this process owns is being read (so messages published now reach it)."""
        return bool(self._owned) and set(self._owned) <= set(self._readers)

    def attach(self, store: Store, broker: Broker) -> Consumer:
        """Give a consumer declared without them its store and broker (what ``tidings consume`` does)."""
        if self.store is None and not self._own_registry:
            shared = registry_of(store)
            shared.include(self.registry)  # what the handlers registered before the store was known
            self.registry = shared
        self.store = self.store or store
        self.broker = self.broker or broker
        return self

    # -- running -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Consume until ``stop`` is set (or the task is cancelled); survives broker and database outages."""
        stop = stop or asyncio.Event()
        self._check_ready()
        await self._check_master_key()
        self._reset_runtime()
        self._stop = stop
        if self.shards > 0:
            self._ownership = shard_ownership(self.store, self.name, self.member_id, self.shards)
        dispatcher = asyncio.get_running_loop().create_task(self._dispatch())
        failures = 0
        try:
            await self._load_blocked()
            while not stop.is_set():
                try:
                    await self._housekeeping()
                    failures = 0
                except Exception as exc:
                    if not is_transient(exc):
                        if classify(exc) is not None:
                            # A missing table, no privilege, a closed store: waiting would never end.
                            stopped = PermanentDatabaseError(f"consumer {self.name}", exc)
                            log.error("%s", stopped)
                            raise stopped from exc
                        raise
                    failures += 1
                    self._set_state("database unavailable", f"{type(exc).__name__}: {exc}", logging.WARNING)
                    await _sleep_or(stop, self.retries.backoff.delay(failures))
                    continue
                await self._idle(stop)
        finally:
            await self._shutdown(dispatcher)

    def _check_ready(self) -> None:
        if self.store is None or self.broker is None:
            raise ValueError(f"consumer {self.name!r} has no store or broker: pass them, or call attach(store, broker)")
        if not self._routes and not self._any:
            raise ValueError(f"consumer {self.name!r} has no handlers: decorate one with @consumer.handler(EventType)")
        if self._any and not self._topics:
            raise ValueError(f"consumer {self.name!r} routes ANY message: say which topics with topics=[...]")
        max_hold = getattr(self.broker, "max_hold", None)
        if isinstance(max_hold, (int, float)) and self.retries.window >= max_hold:
            raise ValueError(
                f"the retries of consumer {self.name!r} can hold a message for {self.retries.window:g} s, but the broker "
                f"keeps held messages only {max_hold:g} s (max_hold) before delivering them elsewhere — "
                "shorten the retries or raise the broker's max_hold"
            )

    async def _check_master_key(self) -> None:
        """A consumer of personal fields stops at start without the right master key, rather than dead-letter each message."""
        if not any(personal_fields(self.registry.type_for(name)) for name in self._routes if name in self.registry):
            return
        what = f"consumer {self.name!r}, which handles personal fields,"
        master_key(what)
        try:
            await check_master_key(self.store, what)  # type: ignore[arg-type]
        except PersonalDataError:
            raise
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            # The database is not up yet: the run waits for it, and each batch checks its keys anyway.

    def _reset_runtime(self) -> None:
        self._lanes: dict[str, deque[_Item]] = {}
        self._ready: deque[str] = deque()
        self._queued: set[str] = set()
        self._busy: set[str] = set()
        self._blocked: set[str] = set()
        self._releasing: set[str] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._kick = asyncio.Event()
        self._room = asyncio.Event()
        self._slots = self.concurrency
        self._pending = 0  # items in lanes, not yet taken into a batch
        self._in_flight = 0
        self._running: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._skipped: list[Delivery] = []
        self._readers: dict[int, tuple[Subscription, asyncio.Task[None]]] = {}
        self._owned: frozenset[int] = frozenset()
        self._ownership: ShardOwnership | None = None
        self._paused_until = 0.0
        self._db_failures = 0
        self._last_prune = 0.0
        self._last_poll = 0.0
        self._last_rebalance = 0.0
        self._wake_replays = asyncio.Event()
        self._listener: Any = None
        self._stop = asyncio.Event()
        self._dead_letters = DeadLetters(self.store) if self.store is not None else None

    async def _housekeeping(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now - self._last_rebalance >= self.rebalance_interval or not self._readers:
            self._last_rebalance = now
            await self._rebalance()
        if now - self._last_poll >= self.replay_poll or self._wake_replays.is_set():
            self._wake_replays.clear()
            self._last_poll = now
            await self._poll_dead_letters()
        if self.inbox_retention is not None and now - self._last_prune >= self.prune_interval and 0 in self._owned:
            self._last_prune = now
            await self._prune()

    async def _idle(self, stop: asyncio.Event) -> None:
        """Wait for the next housekeeping round, a replay request (LISTEN/NOTIFY on PostgreSQL), or stop."""
        timeout = min(self.rebalance_interval, self.replay_poll)
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake_replays.wait())]
        if self.store.dialect == "postgresql":
            waiters.append(asyncio.ensure_future(self._listen(timeout)))
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def _listen(self, timeout: float) -> None:
        # Operators request replays from other processes; the table's trigger notifies us.
        if self._listener is None or self._listener.closed:
            self._listener = await self.store.dedicated_connection()  # type: ignore[attr-defined]
            await self._listener.execute("LISTEN tidings_dead_letters")
        async for notify in self._listener.notifies(timeout=timeout):
            if notify.payload == self.name:
                self._wake_replays.set()
                return

    async def _shutdown(self, dispatcher: asyncio.Task[None]) -> None:
        self._stop.set()
        for shard in list(self._readers):
            await self._stop_reader(shard)
        # Let batches that are running finish and ack; what has not started is redelivered later.
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for lane in self._lanes.values():
            lane.clear()
        self._pending = 0
        dispatcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dispatcher
        await self._finish_running()
        if self._ownership is not None:
            with contextlib.suppress(Exception):
                await self._ownership.release()
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
        self._set_state("stopped")

    # -- shards and subscriptions ----------------------------------------------------------------

    def _group(self, shard: int) -> str:
        return self.name if self.shards <= 1 else f"{self.name}.s{shard}"

    async def _rebalance(self) -> None:
        if self._ownership is None:
            wanted, surplus, others = frozenset({0}), frozenset(), False
        else:
            plan = await self._ownership.rebalance()
            wanted, surplus, others = plan.owned - plan.surplus, plan.surplus, plan.others_seen
            for shard in set(self._readers) - plan.owned:
                # Ownership lost without handing it back (the lock connection died): another member
                # may read this shard already, so stop at once.
                log.warning("consumer %s: lost shard %d; stops reading it", self.name, shard)
                await self._stop_reader(shard)
        for shard in surplus:
            await self._stop_reader(shard)
        if surplus and self._ownership is not None:
            await self._ownership.hand_back(surplus)
        new = wanted - set(self._readers)
        taken = wanted - self._owned
        if wanted != self._owned:
            log.info("consumer %s (%s): reads shard(s) %s of %d", self.name, self.member_id, _csv(wanted), max(1, self.shards))
        self._owned = wanted
        if new:
            if taken and others and self.shards > 0:
                # A shard another member read may still have messages that member received and did
                # not settle; the broker gives them back only after its redelivery delay (NATS:
                # ack_wait). Reading before that would apply newer messages of their keys first.
                await _sleep_or(self._stop, self._handover_wait())
            await self._load_blocked()
        for shard in sorted(new):
            await self._start_reader(shard)

    def _handover_wait(self) -> float:
        if self.handover_wait is not None:
            return self.handover_wait
        ack_wait = getattr(self.broker, "ack_wait", 0.0)
        return float(ack_wait) + 0.5 if isinstance(ack_wait, (int, float)) and ack_wait > 0 else 0.0

    async def _start_reader(self, shard: int) -> None:
        try:
            subscription = await self.broker.subscribe(self.topics, self._group(shard))
        except BrokerUnavailable as exc:
            self._set_state("broker down", f"{exc}; retrying", logging.WARNING)
            return
        log.info("consumer %s: subscribed to %s as group %r", self.name, ", ".join(self.topics), self._group(shard))
        self._set_state("consuming")
        task = asyncio.get_running_loop().create_task(self._read(shard, subscription))
        self._readers[shard] = (subscription, task)

    async def _stop_reader(self, shard: int) -> None:
        """Stop reading a shard and finish what was taken from it; what was not started comes again later."""
        entry = self._readers.pop(shard, None)
        if entry is None:
            return
        subscription, task = entry
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        for key, lane in list(self._lanes.items()):
            kept = deque(item for item in lane if item.shard != shard or item.release)
            dropped = len(lane) - len(kept)
            if dropped:
                self._in_flight -= dropped
                self._pending -= dropped
                self._lanes[key] = kept
            timer = self._timers.get(key)
            if timer is not None and shard_of(key, max(1, self.shards)) == shard:
                timer.cancel()  # its message was among the dropped ones
                del self._timers[key]
        self._room.set()
        await self._finish_running()
        with contextlib.suppress(Exception):
            await subscription.close()

    async def _finish_running(self) -> None:
        """Let running batches commit and ack; after ``shutdown_timeout`` cancel them (they roll back, and come again)."""
        for tasks in (self._running, self._background):
            if not tasks:
                continue
            done, late = await asyncio.wait(set(tasks), timeout=self.shutdown_timeout)
            for task in late:
                task.cancel()
            if late:
                log.warning("consumer %s: %d task(s) did not finish within %g s; cancelled", self.name, len(late), self.shutdown_timeout)
                await asyncio.gather(*late, return_exceptions=True)

    async def _read(self, shard: int, subscription: Subscription) -> None:
        sharded = self.shards > 1
        while not self._stop.is_set():
            try:
                async for delivery in subscription:
                    while self._in_flight >= self.prefetch:
                        self._room.clear()
                        await self._room.wait()
                    if sharded and shard_of(delivery.key, self.shards) != shard:
                        self._skip(delivery)  # another shard's group applies it
                        continue
                    self._in_flight += 1
                    self._accept(self._item(delivery, shard))
                if self._stop.is_set():
                    return
                problem = "the subscription ended"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
            # The subscription ended on its own (consumer deleted on the server, connection lost
            # for good): say so once, and subscribe again until it works.
            self._set_state("broker down", f"{problem}; subscribing again", logging.WARNING)
            subscription = await self._resubscribe(shard, subscription)

    async def _resubscribe(self, shard: int, old: Subscription) -> Subscription:
        with contextlib.suppress(Exception):
            await old.close()
        failures = 0
        while not self._stop.is_set():
            failures += 1
            # What the old subscription held comes back after the broker's redelivery delay; wait
            # that long, so it is not overtaken by newer messages of its keys.
            await _sleep_or(self._stop, max(self.retries.backoff.delay(failures), self._handover_wait()))
            try:
                subscription = await self.broker.subscribe(self.topics, self._group(shard))
            except Exception as exc:
                self._set_state("broker down", f"{type(exc).__name__}: {exc}", logging.WARNING)
                continue
            if shard in self._readers:
                self._readers[shard] = (subscription, self._readers[shard][1])
            self._set_state("consuming")
            return subscription
        return old

    # -- decoding ------------------------------------------------------------------------------

    def _item(self, delivery: Delivery, shard: int) -> _Item:
        """Read the envelope and the event; anything wrong with them is a verdict, decided before any transaction."""
        item = _Item(delivery, shard, delivery.event_id, digest=payload_digest(delivery.payload))
        # Nothing a column or an index cannot hold gets near one: such a value failed every
        # transaction of its message, which was then retried forever (issue 15, finding 3).
        invalid = check_metadata(delivery.headers, delivery.key)
        if invalid is not None:
            self._condemn_unread(item, invalid)
            return item
        try:
            envelope = item.envelope = _envelope_of(delivery.headers)
        except Exception:
            try:
                envelope = item.envelope = headers_to_envelope(delivery.headers)  # the thorough way, for its error
            except (ValueError, TypeError) as exc:
                self._condemn_unread(item, MalformedMessage("message envelope", str(exc)))
                return item
        out_of_range = check_envelope(envelope)
        if out_of_range is not None:
            item.envelope = None
            self._condemn_unread(item, out_of_range)
            return item
        # The envelope's id is the message's identity; a broker's own id (NATS: Nats-Msg-Id) is
        # only a copy of it, and a foreign publisher might have set it differently.
        item.event_id = envelope.event_id
        if delivery.attempt > self.retries.max_deliveries:
            item.verdict = _Verdict(
                f"delivered {delivery.attempt} times without being settled",
                f"the broker delivered this message {delivery.attempt} times (more than max_deliveries="
                f"{self.retries.max_deliveries}); a consumer may have died while handling it each time",
                "",
                0,
            )
            return item
        if self.tenant is not None and envelope.tenant != self.tenant:
            self._condemn(item, WrongTenant(self.name, self.tenant, envelope.tenant))
            return item
        if self.max_message_bytes is not None and len(delivery.payload) > self.max_message_bytes:
            self._condemn(item, MessageTooLarge(envelope.event_type, len(delivery.payload), self.max_message_bytes))
            return item
        self._decode(item, envelope, delivery.payload)
        return item

    def _decode(self, item: _Item, envelope: Envelope, payload: bytes, keys: SubjectKeys | None = None) -> None:
        name = envelope.event_type
        routes = self._routes.get(name)
        item.routes = [*routes, *self._any] if routes else self._any
        if keys is None and is_sealed(payload):
            item.sealed = True  # opened by _open_sealed, with the keys of its whole batch
            return
        try:
            if name in self.registry:
                item.event = self.registry.decode(name, envelope.schema_version, payload, keys)
            elif self._any or routes:
                # Routed by name: the route reads plain data (opened, when it holds personal fields).
                item.event = msgspec.json.decode(keys.open(payload, None, name) if keys else payload)
            else:
                raise UnknownMessageType(name, self.registry.names, envelope.schema_version)
            if keys is not None:
                item.personal = tuple(keys.values(payload))
        except msgspec.DecodeError as exc:
            self._condemn(item, MalformedMessage(name, f"not valid JSON ({exc})"))
        except Exception as exc:
            # Decoding the same bytes again gives the same answer: whatever went wrong, no retry helps.
            self._condemn(item, exc)

    async def _open_sealed(self, items: list[_Item]) -> None:
        """Decode the items holding personal fields, with their subject keys fetched in one query for the batch.

        A forgotten subject's fields decode as their masks; a missing or wrong master key or a
        tampered field condemns the message with the reason (replay it once that is fixed).
        """
        sealed = [item for item in items if item.sealed and item.verdict is None and item.envelope is not None]
        if not sealed:
            return
        keys = SubjectKeys(self.store)
        try:
            await keys.prepare_payloads((item.delivery.payload for item in sealed), f"consumer {self.name}")
        except PersonalDataError as exc:
            for item in sealed:
                self._condemn(item, exc)
            return
        for item in sealed:
            assert item.envelope is not None
            self._decode(item, item.envelope, item.delivery.payload, keys)
            item.sealed = False

    def _condemn(self, item: _Item, error: BaseException) -> None:
        item.verdict = _Verdict("not retryable", _describe(error), _format_traceback(error), 0)

    def _condemn_unread(self, item: _Item, error: BaseException) -> None:
        """Dead-letter a message whose envelope could not be read, under an id the inbox can hold."""
        delivery = item.delivery
        item.event_id = usable_event_id(delivery.headers.get("tidings-event_id"), delivery.event_id, delivery.key, delivery.payload)
        self._condemn(item, error)

    # -- lanes ---------------------------------------------------------------------------------

    def _accept(self, item: _Item) -> None:
        """Queue an item behind its key's earlier ones; mark the key ready if nothing of it runs."""
        if not item.routes and item.verdict is None and not item.release:
            # A type this consumer knows (registered) but does not handle: nothing to apply.
            self.stats.ignored += 1
            self._ack_later([item.delivery])
            self._in_flight -= 1
            return
        key = item.delivery.key
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = deque()
        lane.append(item)
        self._pending += 1
        self._make_ready(key)

    def _make_ready(self, key: str) -> None:
        if key not in self._busy and key not in self._queued and key not in self._timers and self._lanes.get(key):
            self._ready.append(key)
            self._queued.add(key)
            self._kick.set()

    async def _dispatch(self) -> None:
        """Form batches from ready keys and run them, at most ``concurrency`` at a time."""
        loop = asyncio.get_running_loop()
        while True:
            await self._kick.wait()
            self._kick.clear()
            pause = self._paused_until - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            while self._ready and self._slots > 0:
                if self._slots < self.concurrency and self._pending < self.batch_size and self.linger > 0:
                    # Other batches are running, so nothing waits idle: give this one a moment to
                    # fill up. One commit for more messages is what makes the throughput.
                    await self._fill(loop.time() + self.linger)
                    if not self._ready or self._slots <= 0:
                        break
                batch = self._take()
                if not batch:
                    continue
                self._slots -= 1
                task = loop.create_task(self._run_batch(batch))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    async def _fill(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while self._pending < self.batch_size and self._slots < self.concurrency:
            left = deadline - loop.time()
            if left <= 0:
                return
            self._kick.clear()
            try:
                await asyncio.wait_for(self._kick.wait(), left)
            except TimeoutError:
                return

    def _take(self) -> list[_Item]:
        """Up to ``batch_size`` items: whole runs of several ready keys; an item that must run alone, alone."""
        batch: list[_Item] = []
        while self._ready and len(batch) < self.batch_size:
            key = self._ready[0]
            lane = self._lanes.get(key)
            if not lane:
                self._ready.popleft()
                self._queued.discard(key)
                continue
            head = lane[0]
            if head.solo or head.release:
                if batch:
                    break  # runs alone, in the next transaction
                self._ready.popleft()
                self._queued.discard(key)
                self._busy.add(key)
                self._pending -= 1
                return [lane.popleft()]
            self._ready.popleft()
            self._queued.discard(key)
            self._busy.add(key)
            while lane and len(batch) < self.batch_size and not (lane[0].solo or lane[0].release):
                batch.append(lane.popleft())
                self._pending -= 1
        return batch

    def _done_with(self, items: Iterable[_Item]) -> None:
        """The keys of ``items`` may run again; their next items become ready."""
        for key in {item.delivery.key for item in items}:
            self._busy.discard(key)
            if self._lanes.get(key):
                self._make_ready(key)
            else:
                self._lanes.pop(key, None)
        self._slots += 1
        self._kick.set()

    def _requeue(self, items: list[_Item]) -> None:
        """Put items back at the front of their lanes, in their order (unless their shard is no longer read here)."""
        for item in reversed(items):
            if item.shard not in self._readers and not item.release:
                # Its shard was handed back (or lost) while it ran: the next owner gets it from the
                # broker, and must not meet an older copy applied here later.
                self._in_flight -= 1
                self._room.set()
                continue
            lane = self._lanes.get(item.delivery.key)
            if lane is None:
                lane = self._lanes[item.delivery.key] = deque()
            lane.appendleft(item)
            self._pending += 1

    # -- one batch, one transaction ------------------------------------------------------------

    async def _run_batch(self, items: list[_Item]) -> None:
        if items[0].release:
            try:
                await self._release(items[0])
            except Exception as exc:
                # Nothing is lost: the rows are still there, and the next poll queues the key again.
                if is_unavailable(exc):
                    self._database_down(exc)
                else:
                    log.exception("consumer %s: releasing key %r failed; trying again later", self.name, items[0].delivery.key)
            self._done_with(items)
            return
        try:
            await self._apply(items)
        except _ItemFailed as failed:
            self.stats.rollbacks += 1
            if classify(failed.error) == "data":
                # The store refused a value the handler wrote: the same message will write it again.
                self._transaction_failed(items, failed.item, failed.error)
            else:
                self._failed(items, failed.item, failed.error)
            return
        except asyncio.CancelledError:
            self._requeue(items)
            self._done_with(items)
            raise
        except Exception as exc:
            self.stats.rollbacks += 1
            if is_unavailable(exc):
                self._database_down(exc)
                self._requeue(items)
                self._done_with(items)
                return
            if len(items) > 1:
                # The commit (or a queued write) failed and no single message can be blamed: run
                # each alone, so the one at fault shows itself.
                for item in items:
                    item.solo = True
                self._requeue(items)
                self._done_with(items)
                return
            self._transaction_failed(items, items[0], exc)
            return
        self._db_failures = 0
        if self._state in {"database unavailable", "starting"}:
            self._set_state("consuming")
        self.stats.batches += 1
        self._done_with(items)
        self._ack_later([item.delivery for item in items], items)

    async def _apply(self, items: list[_Item]) -> None:
        """Inbox rows, handlers (or dead/held rows) and queued writes of ``items``, in one transaction."""
        writes = _Writes()
        blocked_now: set[str] = set()
        dead_rows: list[NewDeadLetter] = []
        outcome: list[str] = []
        park = self.on_dead == "park"
        await self._open_sealed(items)
        # Once per batch: without an SDK there is no span or metric work per message.
        traced, meters = tracing.tracing_enabled(), instruments()
        timings: list[tuple[str, float]] = []
        async with self.store.transaction():
            seen = await self._inbox(items)
            for item, what in zip(items, seen, strict=True):
                if what == "duplicate":
                    outcome.append("duplicate")
                    continue
                if what == "reused" and item.verdict is None:
                    self._condemn(item, ReusedEventId(item.event_id, item.reused_digest, item.digest))
                key = item.delivery.key
                # A reused id is dead even behind a dead head: held, it would be applied on release.
                if park and (key in self._blocked or key in blocked_now) and what != "reused":
                    dead_rows.append(self._row(item, "held", "held behind an earlier dead letter of its key", "", ""))
                    outcome.append("held")
                    continue
                if item.verdict is not None:
                    verdict = item.verdict
                    dead_rows.append(self._row(item, "dead", verdict.reason, verdict.error, verdict.traceback, verdict.attempts))
                    outcome.append("dead")
                    if park:
                        blocked_now.add(key)
                    continue
                assert item.envelope is not None
                ctx = HandlerContext(self, item.envelope, item.delivery.topic, key, item.failures + 1, writes)
                started = time.perf_counter() if meters is not None else 0.0
                try:
                    if traced:
                        with tracing.process_span(messaging_system_of(self.broker), self.name, item.delivery.topic, item.envelope):
                            await _run_routes(item.routes, item.event, item.envelope, ctx, self.store)
                    else:
                        await _run_routes(item.routes, item.event, item.envelope, ctx, self.store)
                except Exception as exc:
                    if is_unavailable(exc):
                        raise
                    raise _ItemFailed(item, exc) from exc
                if meters is not None:
                    timings.append((item.delivery.topic, time.perf_counter() - started))
                outcome.append("applied")
            await writes.flush(self.store)
            if dead_rows:
                await self._dead_letters.add(self.name, dead_rows)  # type: ignore[union-attr]
        self._blocked |= blocked_now
        if meters is not None and timings:  # counted once committed: a rolled-back batch consumed nothing
            meters.count_consumed(messaging_system_of(self.broker), self.name, timings)
        for item, what in zip([i for i in items], outcome, strict=False):
            if what == "applied":
                self.stats.applied += 1
            elif what == "duplicate":
                self.stats.duplicates += 1
            elif what == "held":
                self.stats.held += 1
            else:
                self.stats.dead += 1
                verdict = item.verdict
                log.error(
                    "consumer %s: dead-lettered %s %s of key %s: %s — %s",
                    self.name, item.envelope.event_type if item.envelope else "message", item.event_id,
                    _short(item.delivery.key), verdict.reason if verdict else "", (verdict.error if verdict else "")[:1000],
                )
        if self.dead_letter_topic and "dead" in outcome:
            self._publish_dead([item for item, what in zip(items, outcome, strict=False) if what == "dead"])

    async def _inbox(self, items: list[_Item]) -> list[str]:
        """Insert the inbox rows of ``items``; for each item "fresh", "duplicate" (applied before) or "reused".

        "reused": its event id was applied before with a different payload. Each row records its
        payload's digest; only when the batch has a known id does a second statement read the
        recorded digests, and only a reused id costs a third, which records the reuse under a
        marker id, so a redelivery of the same reusing message is a duplicate, dead-lettered once.
        """
        fresh = await self._insert_inbox([(item.event_id, item.digest) for item in items])
        seen: list[str] = []
        first: dict[str, int] = {}
        known: list[int] = []
        for index, item in enumerate(items):
            if item.event_id in fresh:
                fresh.discard(item.event_id)
                first[item.event_id] = item.digest
                seen.append("fresh")
            elif item.event_id in first:  # a second copy in this batch
                item.reused_digest = first[item.event_id]
                seen.append("duplicate" if item.digest == first[item.event_id] else "reused")
            else:
                known.append(index)
                seen.append("duplicate")
        if known:
            recorded = await self._recorded_digests(list({items[i].event_id for i in known}))
            for index in known:
                item = items[index]
                digest = recorded.get(item.event_id)
                if digest is not None and digest != item.digest:  # None: recorded before digests were
                    item.reused_digest = digest
                    seen[index] = "reused"
        reused = [i for i, what in enumerate(seen) if what == "reused"]
        if reused:
            markers = {i: f"{items[i].event_id}#reused:{items[i].digest & 2**64 - 1:016x}" for i in reused}
            new = await self._insert_inbox([(marker, items[i].digest) for i, marker in markers.items()])
            for i, marker in markers.items():
                if marker not in new:
                    seen[i] = "duplicate"  # this very reuse was dead-lettered before
                else:
                    new.discard(marker)
        return seen

    async def _insert_inbox(self, rows: list[tuple[str, int]]) -> set[str]:
        if self.store.dialect == "postgresql":
            found = await self.store.fetch(
                "INSERT INTO tidings_inbox (consumer, event_id, payload_digest) SELECT ?, * FROM unnest(?::text[], ?::bigint[]) "
                "ON CONFLICT DO NOTHING RETURNING event_id",
                (self.name, [r[0] for r in rows], [r[1] for r in rows]),
            )
        else:
            found = await self.store.fetch(_sqlite_inbox(len(rows)), [v for r in rows for v in (self.name, *r)])
        return {row[0] for row in found}

    async def _recorded_digests(self, ids: list[str]) -> dict[str, int | None]:
        if self.store.dialect == "postgresql":
            rows = await self.store.fetch(
                "SELECT event_id, payload_digest FROM tidings_inbox WHERE consumer = ? AND event_id = ANY(?::text[])",
                (self.name, ids),
            )
        else:
            placeholders = ", ".join("?" for _ in ids)
            rows = await self.store.fetch(
                f"SELECT event_id, payload_digest FROM tidings_inbox WHERE consumer = ? AND event_id IN ({placeholders})",
                (self.name, *ids),
            )
        return {event_id: digest for event_id, digest in rows}

    def _row(self, item: _Item, status: str, reason: str, error: str, trace: str, attempts: int = 0) -> NewDeadLetter:
        delivery, envelope = item.delivery, item.envelope
        event_type = envelope.event_type if envelope else delivery.headers.get("tidings-event_type")
        return NewDeadLetter(
            topic=delivery.topic,
            key=delivery.key,
            partition=delivery.partition,
            event_id=item.event_id,
            event_type=event_type,
            importance=importance_of(self.registry, event_type),
            schema_version=envelope.schema_version if envelope else None,
            headers=dict(delivery.headers),
            envelope=_envelope_encoder.encode(envelope) if envelope else None,
            payload=delivery.payload,
            reason=reason,
            error=error,
            traceback=trace,
            attempts=attempts,
            status=status,
        )

    # -- failures ------------------------------------------------------------------------------

    def _transaction_failed(self, items: list[_Item], item: _Item, error: BaseException) -> None:
        """``item``'s transaction failed in the store: its inbox row, a write (queued or a handler's), its dead letter, the commit.

        The safety net under the checks of :mod:`tidings.runtime.incoming`: a failure that comes
        back the same way is not going to go away, so the second one dead-letters the message
        with the error, instead of the whole retry schedule. And when even its dead letter cannot
        be written, the message is not spun on: it waits with backoff, un-acked (nothing is lost),
        and each failed attempt is logged as an error — a store that refuses every dead letter
        needs an operator.
        """
        signature = _signature(error)
        if item.verdict is not None:
            item.unwritable += 1
            item.solo = True
            # Not the handler's retry backoff (which may be milliseconds): this waits for an operator.
            delay = min(_UNWRITABLE_CAP_S, 2.0 ** (item.unwritable - 1))
            log.error(
                "consumer %s: message %s of key %s could not be dead-lettered (%s: %s); trying again in %.1f s — "
                "the store refuses the row, see the error",
                self.name, _short(item.event_id), _short(item.delivery.key), item.verdict.reason, _describe(error), delay,
            )
            self._requeue(items)
            key = item.delivery.key
            self._timers[key] = asyncio.get_running_loop().call_later(delay, self._retry_due, key)
            self._done_with(items)
            return
        if signature == item.last_failure:
            item.failures += 1
            item.error = error
            item.trace = _format_traceback(error)
            item.solo = True
            item.verdict = _Verdict("its transaction failed twice the same way", _describe(error), item.trace, item.failures)
            self._requeue(items)
            self._done_with(items)
            return
        item.last_failure = signature
        self._failed(items, item, error)

    def _failed(self, items: list[_Item], item: _Item, error: BaseException) -> None:
        """A handler of ``item`` raised: retry it now, later, or dead-letter it; its batch-mates run again."""
        item.failures += 1
        item.error = error
        item.trace = _scrubbed(item, _format_traceback(error))
        item.solo = True
        self.stats.retried += 1
        if isinstance(error, self.not_retryable):
            item.verdict = _Verdict("not retryable", _scrubbed(item, _describe(error)), item.trace, item.failures)
        elif item.failures > self.retries.immediate + self.retries.delayed:
            item.verdict = _Verdict(
                f"gave up after {item.failures} attempts", _scrubbed(item, _describe(error)), item.trace, item.failures
            )
        self._requeue(items)
        if item.verdict is None and item.failures > self.retries.immediate:
            # A delayed retry: the key waits (it is not made ready while its timer runs), the
            # message stays held un-acked, and every other key carries on.
            delay = self.retries.backoff.delay(item.failures - self.retries.immediate)
            key = item.delivery.key
            self._timers[key] = asyncio.get_running_loop().call_later(delay, self._retry_due, key)
        self._done_with(items)

    def _retry_due(self, key: str) -> None:
        self._timers.pop(key, None)
        self._make_ready(key)

    def _database_down(self, exc: BaseException) -> None:
        self._db_failures += 1
        self._set_state("database unavailable", f"{type(exc).__name__}: {exc}", logging.WARNING)
        self._paused_until = asyncio.get_running_loop().time() + self.retries.backoff.delay(self._db_failures)

    # -- acks ----------------------------------------------------------------------------------

    def _skip(self, delivery: Delivery) -> None:
        """Ack a delivery that is not ours to apply, together with the others skipped meanwhile."""
        self._skipped.append(delivery)
        if len(self._skipped) == 1:
            task = asyncio.get_running_loop().create_task(self._ack_skipped())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _ack_skipped(self) -> None:
        await asyncio.sleep(0)  # let the reader add what else arrived in this turn
        while self._skipped:
            skipped, self._skipped = self._skipped, []
            await self._ack(skipped, counted=False)

    def _ack_later(self, deliveries: list[Delivery], items: list[_Item] | None = None) -> None:
        """Ack after the commit, off the worker's path; a failed ack is harmless (the inbox skips the redelivery)."""
        task = asyncio.get_running_loop().create_task(self._ack(deliveries, counted=items is not None))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _ack(self, deliveries: list[Delivery], counted: bool) -> None:
        # How to ack a batch depends on what an ack costs, so the first one tells. An ack that
        # waited (a confirmed ack is a network round trip: NATS) means the rest go at once: one
        # after the other, they kept messages counted in flight long enough to starve the reader
        # (a third fewer messages/s measured). An ack that returned at once (the local log's
        # offset) means the rest go one after the other: a task each would cost more than the ack.
        # A broker that is down costs one timeout, not one per message.
        loop = asyncio.get_running_loop()
        try:
            started = loop.time()
            first = await _settled(deliveries[0].ack())
            rest = deliveries[1:]
            if first is not None or loop.time() - started > _QUICK_ACK_S:
                results = [first, *await asyncio.gather(*(_settled(d.ack()) for d in rest))]
            else:
                results = [first]
                for index, delivery in enumerate(rest):
                    error = await _settled(delivery.ack())
                    results.append(error)
                    if error is not None:
                        results.extend(await asyncio.gather(*(_settled(d.ack()) for d in rest[index + 1 :])))
                        break
            failed = [r for r in results if r is not None]
            if failed:
                self._set_state(
                    "broker down",
                    f"{len(failed)} ack(s) failed ({failed[0]}); the broker delivers them again and the inbox skips them",
                    logging.WARNING,
                )
            elif self._state == "broker down":
                self._set_state("consuming")
        finally:
            if counted:
                self._in_flight -= len(deliveries)
                self._room.set()

    def _publish_dead(self, items: list[_Item]) -> None:
        topic = self.dead_letter_topic
        assert topic is not None
        messages = [
            OutgoingMessage(
                topic=topic,
                key=item.delivery.key,
                partition=item.delivery.partition,
                event_id=f"{self.name}:{item.event_id}",
                headers={**item.delivery.headers, "tidings-dead-letter-consumer": self.name,
                         "tidings-dead-letter-error": (item.verdict.error if item.verdict else "")[:500]},
                payload=item.delivery.payload,
            )
            for item in items
        ]

        async def publish() -> None:
            try:
                results = await self.broker.publish(messages)
            except Exception as exc:  # the table is the record; the broker's copy is a convenience
                results = [exc]
            for result in results:
                if result is not None:
                    log.warning("consumer %s: could not copy a dead letter to topic %s: %s", self.name, topic, result)

        task = asyncio.get_running_loop().create_task(publish())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- dead letters: parking, replay, release -------------------------------------------------

    async def _load_blocked(self) -> None:
        """Keys parked behind dead letters (after a restart, or a shard taken over)."""
        if self.on_dead != "park":
            return
        blocking = await self._dead_letters.blocking(self.name)  # type: ignore[union-attr]
        for key in blocking:
            if self._mine(key):
                self._blocked.add(key)

    def _mine(self, key: str) -> bool:
        return self.shards <= 1 or shard_of(key, self.shards) in self._owned

    async def _poll_dead_letters(self) -> None:
        """Find keys with replays requested (or whose dead head was purged) and queue their release."""
        blocking = await self._dead_letters.blocking(self.name)  # type: ignore[union-attr]
        for key, statuses in blocking.items():
            if not self._mine(key) or key in self._releasing:
                continue
            if self.on_dead == "park":
                self._blocked.add(key)  # maybe parked by another member of a shared group
                due = "replay_requested" in statuses or "dead" not in statuses
            else:
                due = "replay_requested" in statuses
            if due:
                self._releasing.add(key)
                marker = _Item(Delivery(topic="", key=key, partition=0, event_id="", headers={}, payload=b""), 0, "")
                marker.release = True
                lane = self._lanes.get(key)
                if lane is None:
                    lane = self._lanes[key] = deque()
                # At the front: the rows it releases are older than anything still queued for the key.
                lane.appendleft(marker)
                self._pending += 1
                self._make_ready(key)

    async def _release(self, marker: _Item) -> None:
        """Apply the key's replay-requested rows, then (parking) its held rows, in order; stop at a dead one."""
        key = marker.delivery.key
        try:
            rows = await self._dead_letters.of_key(self.name, key)  # type: ignore[union-attr]
            park = self.on_dead == "park"
            for row in rows:
                if row.status == "dead":
                    if park:
                        return  # still the head: the key stays parked
                    continue
                if row.status == "held" and not park:
                    continue
                if not await self._replay(row):
                    return
            if park:
                self._blocked.discard(key)
                log.info("consumer %s: key %r released; its messages flow again", self.name, key)
        finally:
            self._releasing.discard(key)

    async def _replay(self, row: DeadLetter) -> bool:
        """Apply one dead-lettered row once (status change and effects in one transaction); False if it failed again."""
        delivery = Delivery(
            topic=row.topic, key=row.key, partition=row.partition, event_id=row.event_id,
            headers=dict(row.headers), payload=row.payload, attempt=1,
        )
        item = self._item(delivery, shard_of(row.key, max(1, self.shards)))
        await self._open_sealed([item])
        error: BaseException | None = None
        for attempt in range(1 + self.retries.immediate):
            if item.verdict is not None:
                break
            writes = _Writes()
            try:
                async with self.store.transaction():
                    if not await self._dead_letters.settle(row.id, row.status, "replayed"):  # type: ignore[union-attr]
                        return True  # someone else replayed it meanwhile
                    assert item.envelope is not None
                    ctx = HandlerContext(self, item.envelope, row.topic, row.key, attempt + 1, writes)
                    await _run_routes(item.routes, item.event, item.envelope, ctx, self.store)
                    await writes.flush(self.store)
            except Exception as exc:
                if is_unavailable(exc):
                    raise
                error = exc
                if isinstance(exc, self.not_retryable):
                    break
                continue
            self.stats.replayed += 1
            log.info("consumer %s: replayed dead letter %d (%s of key %r)", self.name, row.id, row.event_type, row.key)
            return True
        if item.verdict is not None:
            text, trace, runs = item.verdict.error, item.verdict.traceback, 0
        else:
            assert error is not None
            text, trace = _scrubbed(item, _describe(error)), _scrubbed(item, _format_traceback(error))
            runs = 1 + self.retries.immediate
        why = "failed again when replayed" if row.status == "replay_requested" else "failed when released behind its key"
        await self._dead_letters.fail_again(row.id, text, trace, runs, why)  # type: ignore[union-attr]
        log.error("consumer %s: dead letter %d failed again when replayed: %s", self.name, row.id, text)
        return False

    # -- inbox pruning ---------------------------------------------------------------------------

    async def _prune(self) -> int:
        """Delete inbox rows older than the retention, a bounded batch per statement."""
        assert self.inbox_retention is not None
        cutoff = utc_now() - self.inbox_retention
        total = 0
        while not self._stop.is_set():
            deleted = await self.store.run(
                "DELETE FROM tidings_inbox WHERE consumer = ? AND event_id IN (SELECT event_id FROM tidings_inbox "
                "WHERE consumer = ? AND processed_at < ? ORDER BY processed_at LIMIT ?)",
                (self.name, self.name, cutoff, self.prune_batch),
            )
            total += max(0, deleted)
            if deleted < self.prune_batch:
                break
            await asyncio.sleep(0)  # let messages through between batches
        if total:
            log.info("consumer %s: pruned %d inbox row(s) older than %s", self.name, total, self.inbox_retention)
        return total

    # -- logging ---------------------------------------------------------------------------------

    def _set_state(self, state: str, detail: str = "", level: int = logging.INFO) -> None:
        # State changes are logged once each, never per message.
        if state == self._state:
            return
        if self._state in {"broker down", "database unavailable"} and state == "consuming":
            log.info("consumer %s: recovered (%s ended)", self.name, self._state)
        else:
            log.log(level, "consumer %s: %s%s", self.name, state, f" — {detail}" if detail else "")
        self._state = state


async def _run_routes(routes: Sequence[_Route], event: Any, envelope: Envelope, ctx: HandlerContext, store: Store) -> None:
    for route in routes:
        if route.style == "handler":
            await route.fn(event, ctx)
        else:
            await route.fn(envelope, event, store)


async def _settled(ack: Awaitable[None]) -> BaseException | None:
    try:
        await ack
    except (BrokerUnavailable, OSError, ConnectionError, TimeoutError) as exc:
        return exc
    return None


def _require_async(fn: Callable[..., Any]) -> Callable[..., Awaitable[None]]:
    if not inspect.iscoroutinefunction(fn) and not inspect.iscoroutinefunction(getattr(fn, "__call__", None)):
        raise TypeError(f"{getattr(fn, '__qualname__', fn)!r} must be an async function: handlers run inside a transaction")
    return fn


@lru_cache(maxsize=64)
def _sqlite_inbox(count: int) -> str:
    values = ", ".join(["(?, ?, ?)"] * count)
    return (
        f"INSERT INTO tidings_inbox (consumer, event_id, payload_digest) VALUES {values} "
        "ON CONFLICT DO NOTHING RETURNING event_id"
    )


def _envelope_of(headers: dict[str, str]) -> Envelope:
    """The envelope in ``headers``, built directly (a third of headers_to_envelope's cost, which it falls back to)."""
    version = headers.get("tidings-aggregate_version")
    return Envelope(
        event_id=headers["tidings-event_id"],
        event_type=headers["tidings-event_type"],
        schema_version=int(headers["tidings-schema_version"]),
        occurred_at=datetime.fromisoformat(headers["tidings-occurred_at"]),
        aggregate_type=headers.get("tidings-aggregate_type"),
        aggregate_id=headers.get("tidings-aggregate_id"),
        aggregate_version=None if version is None else int(version),
        correlation_id=headers["tidings-correlation_id"],
        causation_id=headers.get("tidings-causation_id"),
        user_id=headers.get("tidings-user_id"),
        tenant=headers.get("tidings-tenant"),
        source=headers.get("tidings-source"),
        command_type=headers.get("tidings-command_type"),
        command_causation_id=headers.get("tidings-command_causation_id"),
        traceparent=headers.get("traceparent"),
    )


def _signature(error: BaseException) -> str:
    """How a failure looks, to tell "the same error again" from another one.

    Only the first line of the message: PostgreSQL's detail lines quote the failing row, whose
    generated ids differ on every attempt.
    """
    return f"{type(error).__qualname__}|{getattr(error, 'sqlstate', None)}|{str(error).partition(chr(10))[0][:500]}"


def _short(value: str, limit: int = 80) -> str:
    """A value for a log line: quoted, and cut short when long (keys and ids may be hostile)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…"


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _scrubbed(item: _Item, text: str) -> str:
    """``text`` without the plaintext of the item's personal fields (a handler's error may quote them)."""
    return scrubbed(text, item.personal) if item.personal else text


def _format_traceback(error: BaseException) -> str:
    return "".join(traceback_module.format_exception(type(error), error, error.__traceback__))


def _csv(shards: Iterable[int]) -> str:
    return ",".join(str(s) for s in sorted(shards)) or "(none)"


async def _sleep_or(stop: asyncio.Event, seconds: float) -> None:
    if seconds <= 0:
        return
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
