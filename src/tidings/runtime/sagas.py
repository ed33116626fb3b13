"""Sagas (process managers): workflows across contexts, keyed by a correlation value, with durable state.

A saga class declares the messages that start it and those it handles next, each with a function
that takes the correlation key from the message::

    class AssetProcessing(Saga, context="assets"):
        status: str = "awaiting metadata"

        @starts(AssetUploaded, key=lambda e: e.asset_id)
        def uploaded(self, event: AssetUploaded) -> ExtractMetadata:
            self.schedule(timedelta(minutes=30), ProcessingOverdue(asset_id=event.asset_id))
            return ExtractMetadata(asset_id=event.asset_id)

A handler changes the saga's declared state and returns commands (sent on the context's command
topic) and integration events; it may schedule and cancel deadlines, complete the saga, or
compensate: run, newest first, the compensation declared next to every forward step done so far.

The runner delivers a message inside the caller's transaction (a consumer's inbox transaction):
it loads the instance by (saga type, key), lets the handler decide, and writes the new state, the
outbox rows of what the handler sent and the deadline changes, all in that transaction. Handlers
are plain functions of state and message, so the test kit runs the same decisions with no store.

Concurrency is optimistic: a save names the version it loaded (``UPDATE … WHERE version = ?``). A
racing update of the same instance changes no row, which is a ConcurrencyError; the runner rolls
the attempt back to a savepoint, reloads and decides again.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
import typing
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal, TypeVar

import msgspec

from tidings.app.application import DEFAULT_MAX_MESSAGE_BYTES
from tidings.app.outgoing import command_topic, outbox_entry
from tidings.messaging.personal import PersonalDataError, personal_fields
from tidings.domain.errors import ConcurrencyError, TidingsError
from tidings.domain.messages import Command, DomainEvent, Message
from tidings.messaging.contracts import IntegrationEvent, partition_key_of, topic_of
from tidings.messaging.envelope import Envelope, utc_now
from tidings.messaging.errors import MalformedMessage
from tidings.messaging.ids import new_id
from tidings.messaging.partitioning import DEFAULT_PARTITIONS
from tidings.messaging.registry import MessageRegistry
from tidings.runtime.scheduler import DeadlineRow, NewDeadline, cancel_deadlines, insert_deadlines, mark_fired
from tidings.store.base import Store
from tidings.store.errors import is_conflict
from tidings.store.locks import lock_until_commit
from tidings.store.names import component_name
from tidings.store.records import Changes, OutboxEntry

__all__ = [
    "ArchivedSaga",
    "Deadline",
    "Saga",
    "SagaOutcome",
    "SagaRecord",
    "SagaRunner",
    "Step",
    "compensates",
    "decide",
    "list_archived",
    "list_sagas",
    "on",
    "starts",
]

log = logging.getLogger("tidings.sagas")

Status = Literal["started", "advanced", "completed", "compensated", "ignored"]
KeyOf = Callable[[Any], object]
H = TypeVar("H", bound=Callable[..., Any])
S = TypeVar("S", bound="Saga")
MessageHandler = Callable[[Envelope, Any, Store], Awaitable[None]]

_STEPS_ATTR = "__tidings_saga_steps__"
_COMPENSATES_ATTR = "__tidings_compensates__"
_RESERVED = frozenset({"key", "version", "cause"})
_IMMUTABLE = frozenset({int, float, str, bool, bytes, type(None)})
_json = msgspec.json.Encoder()
_SAGA_LOCK_NAMESPACE = 0x7473  # "ts": the starts of one saga instance
_envelope_decoder = msgspec.json.Decoder(Envelope)


# -- declaring a saga ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deadline:
    """A message a saga asked to receive after ``after``: what ``schedule`` records and the test kit compares."""

    after: timedelta
    message: Message


@dataclass(frozen=True, slots=True)
class Step:
    """One message type a saga handles: its handler, how to find the instance, and what it may do."""

    name: str
    message_type: type[Message]
    handler: Callable[[Any, Any], Any]
    key: KeyOf | None
    starts: bool
    compensate: bool
    compensation: Callable[[Any], Any] | None = None


def starts(message_type: type[Message], *, key: KeyOf) -> Callable[[H], H]:
    """Decorator: this handler starts an instance (keyed by ``key(message)``) or, if one runs for that key, advances it."""
    if key is None:
        raise TypeError(f"@starts({message_type.__name__}) needs key=...: a function of the message giving the correlation value")
    return _declare(message_type, key=key, starts=True, compensate=False)


def on(message_type: type[Message], *, key: KeyOf | None = None, compensate: bool = False) -> Callable[[H], H]:
    """Decorator: this handler advances the instance of ``key(message)``; without ``key`` it receives deadlines only.

    ``compensate=True`` marks a failure: after the handler, the compensations of every step done
    so far run, newest first, and the saga ends as compensated.
    """
    return _declare(message_type, key=key, starts=False, compensate=compensate)


def compensates(step: Callable[..., Any]) -> Callable[[H], H]:
    """Decorator: this method ``(self) -> messages`` undoes ``step``; it runs if the saga compensates after ``step`` ran."""
    if not hasattr(step, _STEPS_ATTR):
        raise TypeError(
            f"@compensates takes a step (a method decorated with @starts or @on), got {getattr(step, '__qualname__', step)!r}"
        )

    def register(fn: H) -> H:
        _refuse_async(fn)
        setattr(fn, _COMPENSATES_ATTR, step.__name__)
        return fn

    return register


def _declare(message_type: type[Message], *, key: KeyOf | None, starts: bool, compensate: bool) -> Callable[[H], H]:
    if not (isinstance(message_type, type) and issubclass(message_type, Message)):
        raise TypeError(f"a saga handles message classes (events, commands), got {message_type!r}")
    if key is not None and not callable(key):
        raise TypeError(f"key must be a function of the {message_type.__name__} (lambda m: m.some_id), got {key!r}")

    def register(fn: H) -> H:
        _refuse_async(fn)
        declared = getattr(fn, _STEPS_ATTR, ())
        setattr(fn, _STEPS_ATTR, (*declared, (message_type, key, starts, compensate)))
        return fn

    return register


def _refuse_async(fn: Callable[..., Any]) -> None:
    if inspect.iscoroutinefunction(fn):
        raise TypeError(
            f"{fn.__qualname__} is async; saga handlers are plain functions of their state and the message. "
            "Work that needs I/O belongs in a command handler: return the command from the saga instead"
        )


# -- the saga --------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Effects:
    """What one handler call asked for, in order."""

    commands: list[tuple[Command, str | None]] = field(default_factory=list)
    events: list[tuple[IntegrationEvent, str | None]] = field(default_factory=list)
    scheduled: list[tuple[str, Deadline]] = field(default_factory=list)
    cancelled: list[tuple[str, str]] = field(default_factory=list)  # ("type", name) or ("id", deadline id)
    finish: tuple[Literal["completed", "compensated"], str | None] | None = None


class Saga:
    """A process manager: declared state (annotated attributes with defaults), steps, deadlines and compensations.

    Subclass it with ``name=`` (stable saga type, default the class name) and ``context=`` (the
    bounded context whose command topic receives the commands it returns, and the envelopes' source).
    """

    saga_type: ClassVar[str] = "Saga"
    context: ClassVar[str | None] = None
    #: A key whose saga finished may start a new instance (off: a late or replayed start is ignored).
    restartable: ClassVar[bool] = False
    #: Handled messages remembered per instance (the first one and the most recent ones).
    history_limit: ClassVar[int] = 50

    key: str
    version: int
    #: The envelope of the message being handled (correlation, causation, time), inside a handler.
    cause: Envelope | None

    _steps: ClassVar[dict[type[Message], Step]] = {}
    _fields_cache: ClassVar[dict[str, Any] | None] = None
    _struct_cache: ClassVar[type[msgspec.Struct] | None] = None

    def __init_subclass__(cls, *, name: str | None = None, context: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.saga_type = component_name(cls.__name__ if name is None else name, "saga name")
        if context is not None:
            cls.context = context
        cls._fields_cache = None
        cls._struct_cache = None
        cls._steps = _collect_steps(cls)

    def __init__(self, key: str) -> None:
        if not isinstance(key, str) or not key:
            raise TypeError(f"{type(self).__name__} needs a non-empty str key, got {key!r}")
        self.key = key
        self.version = 0
        self.cause = None
        self._saga_id = new_id()
        self._correlation_id = ""
        self._started_at: datetime | None = None
        self._steps_done: list[str] = []
        self._history: list[dict[str, Any]] = []
        self._effects = _Effects()
        defaults = type(self).state_defaults()
        for name, default in defaults.items():
            # Deep-copied: a default list must not be shared between instances.
            setattr(self, name, default if type(default) in _IMMUTABLE else copy.deepcopy(default))

    # -- what a handler may do -----------------------------------------------------------------

    def send(self, command: Command, *, context: str | None = None) -> None:
        """Send ``command`` to ``context``'s command topic (default: this saga's context) through the outbox."""
        if not isinstance(command, Command):
            raise TypeError(f"send takes a Command, got {type(command).__name__}")
        self._effects.commands.append((command, context))

    def publish(self, event: IntegrationEvent, *, topic: str | None = None) -> None:
        """Publish ``event`` (on ``topic``, default its contract's ``topic`` attribute, else its message name) through the outbox."""
        if not isinstance(event, IntegrationEvent):
            raise TypeError(f"publish takes an IntegrationEvent, got {type(event).__name__}")
        self._effects.events.append((event, topic))

    def schedule(self, after: timedelta | float, message: Message) -> str:
        """Deliver ``message`` to this instance after ``after`` (a timedelta or seconds); returns the deadline's id."""
        if type(message) not in type(self)._steps:
            name = type(message).__name__
            raise TypeError(
                f"{self.saga_type} schedules {name} but has no handler for it; add a method decorated with @on({name})"
            )
        delay = after if isinstance(after, timedelta) else timedelta(seconds=after)
        if delay < timedelta(0):
            raise ValueError(f"a deadline cannot be in the past (after={after!r})")
        deadline_id = new_id()
        self._effects.scheduled.append((deadline_id, Deadline(delay, message)))
        return deadline_id

    def cancel(self, deadline: type[Message] | str) -> None:
        """Cancel pending deadlines: every one of a message type, or the one whose id ``schedule`` returned."""
        if isinstance(deadline, str):
            kind, value = "id", deadline
            self._effects.scheduled = [(i, d) for i, d in self._effects.scheduled if i != deadline]
        elif isinstance(deadline, type) and issubclass(deadline, Message):
            kind, value = "type", deadline.message_name
            self._effects.scheduled = [(i, d) for i, d in self._effects.scheduled if type(d.message) is not deadline]
        else:
            raise TypeError(f"cancel takes a message class or a deadline id, got {deadline!r}")
        self._effects.cancelled.append((kind, value))

    def complete(self) -> None:
        """End the saga after this handler: it is archived and its pending deadlines are cancelled."""
        if self._effects.finish is None:
            self._effects.finish = ("completed", None)

    def compensate(self, reason: str) -> None:
        """After this handler, run the compensation of every step done so far (newest first) and end the saga."""
        self._effects.finish = ("compensated", reason)

    # -- state ---------------------------------------------------------------------------------

    @classmethod
    def state_fields(cls) -> dict[str, Any]:
        """The declared state attributes and their types."""
        if cls._fields_cache is None:
            hints = typing.get_type_hints(cls)
            cls._fields_cache = {
                name: hint
                for name, hint in hints.items()
                if name not in _RESERVED and not name.startswith("_") and typing.get_origin(hint) is not ClassVar
                and hint is not ClassVar
            }  # fmt: skip
        return cls._fields_cache

    @classmethod
    def state_defaults(cls) -> dict[str, Any]:
        """Default of each declared state attribute (None where none is given)."""
        return {name: getattr(cls, name, None) for name in cls.state_fields()}

    def state(self) -> dict[str, Any]:
        """This instance's state as a dict of its declared attributes."""
        return {name: getattr(self, name) for name in self.state_fields()}

    @classmethod
    def steps(cls) -> dict[type[Message], Step]:
        """Every message type this saga handles, with its step."""
        return dict(cls._steps)

    @classmethod
    def _struct(cls) -> type[msgspec.Struct]:
        if cls._struct_cache is None:
            fields: list[tuple[str, Any, Any]] = []
            for name, hint in cls.state_fields().items():
                default = getattr(cls, name, None)
                if type(default) not in _IMMUTABLE:
                    fields.append((name, hint, msgspec.field(default_factory=lambda d=default: copy.deepcopy(d))))
                else:
                    fields.append((name, hint, default))
            cls._struct_cache = msgspec.defstruct(f"{cls.__name__}State", fields, kw_only=True)
        return cls._struct_cache

    def _encode_state(self) -> bytes:
        return _json.encode(self.state())

    @classmethod
    def _restore(cls: type[S], record: SagaRecord) -> S:
        instance = cls.__new__(cls)
        instance.key = record.key
        instance.version = record.version
        instance.cause = None
        instance._saga_id = record.saga_id
        instance._correlation_id = record.correlation_id
        instance._started_at = record.started_at
        instance._steps_done = list(record.steps)
        instance._history = list(record.history)
        instance._effects = _Effects()
        try:
            state = msgspec.structs.asdict(msgspec.convert(record.state, cls._struct()))
        except msgspec.ValidationError as exc:
            raise MalformedMessage(
                cls._struct().__name__, f"stored state of {cls.saga_type} {record.key} does not fit the declared fields: {exc}"
            ) from None
        for name, value in state.items():
            setattr(instance, name, value)
        return instance

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key} v{self.version}>"

    # -- taking a turn -------------------------------------------------------------------------

    def _take_turn(self, step: Step, envelope: Envelope, message: Message, *, started: bool) -> SagaOutcome:
        """Run ``step``'s handler (and compensations if asked) and return what it decided; no I/O."""
        self.cause = envelope
        self._effects = effects = _Effects()
        compensated: list[str] = []
        try:
            self._collect(step.handler(self, message), step.name)
            if step.compensation is not None:
                self._steps_done.append(step.name)
            if step.compensate and (effects.finish is None or effects.finish[0] != "compensated"):
                effects.finish = ("compensated", message.message_name)
            if effects.finish is not None and effects.finish[0] == "compensated":
                compensations = {s.name: s.compensation for s in type(self)._steps.values() if s.compensation}
                for name in reversed(self._steps_done):
                    compensation = compensations.get(name)
                    if compensation is not None:
                        self._collect(compensation(self), compensation.__name__)
                        compensated.append(name)
                self._steps_done.clear()
        finally:
            self.cause = None
        self.version += 1
        self._remember(step, envelope, message)
        status: Status
        if effects.finish is not None:
            status = effects.finish[0]
        else:
            status = "started" if started else "advanced"
        finished = effects.finish is not None
        return SagaOutcome(
            saga_type=self.saga_type,
            key=self.key,
            status=status,
            step=step.name,
            version=self.version,
            started=started,
            commands=[c for c, _ in effects.commands],
            events=[e for e, _ in effects.events],
            # A finished saga keeps no deadlines, not even those scheduled in its last turn.
            deadlines=[] if finished else [d for _, d in effects.scheduled],
            cancelled=[value for _, value in effects.cancelled],
            reason=effects.finish[1] if effects.finish else None,
            compensated=compensated,
            instance=self,
        )

    def _collect(self, result: object, where: str) -> None:
        if result is None:
            return
        if isinstance(result, (list, tuple)):
            for item in result:
                self._collect(item, where)
        elif isinstance(result, Command):
            self.send(result)
        elif isinstance(result, IntegrationEvent):
            self.publish(result)
        elif inspect.isawaitable(result):
            close = getattr(result, "close", None)
            if close is not None:
                close()  # no "never awaited" warning on top of the error
            raise TypeError(f"{self.saga_type}.{where} returned an awaitable; saga handlers are plain functions")
        elif isinstance(result, DomainEvent):
            raise TypeError(
                f"{self.saga_type}.{where} returned the domain event {type(result).__name__}; a saga sends commands "
                "and publishes integration events — domain events are recorded by aggregates"
            )
        else:
            raise TypeError(
                f"{self.saga_type}.{where} returned {type(result).__name__}; return commands, integration events, "
                "a list of them, or None"
            )

    def _remember(self, step: Step, envelope: Envelope, message: Message) -> None:
        self._history.append(
            {"message": message.message_name, "step": step.name, "event_id": envelope.event_id, "at": envelope.occurred_at.isoformat()}
        )
        limit = max(2, type(self).history_limit)
        if len(self._history) > limit:
            # The first entry says how it started; the rest are the most recent.
            self._history = [self._history[0], *self._history[-(limit - 1) :]]


def _collect_steps(cls: type[Saga]) -> dict[type[Message], Step]:
    by_name: dict[str, list[Step]] = {}
    compensations: dict[str, Callable[[Any], Any]] = {}
    for klass in reversed(cls.__mro__):
        for attr_name, attr in vars(klass).items():
            declared = getattr(attr, _STEPS_ATTR, None)
            if declared is not None and callable(attr):
                by_name[attr_name] = [
                    Step(attr_name, message_type, attr, key, starts_, compensate)
                    for message_type, key, starts_, compensate in declared
                ]
            target = getattr(attr, _COMPENSATES_ATTR, None)
            if target is not None and callable(attr):
                compensations[target] = attr
    unknown = sorted(set(compensations) - set(by_name))
    if unknown:
        raise TypeError(f"{cls.__name__}: @compensates names {', '.join(unknown)}, which is not a step of this saga")
    steps: dict[type[Message], Step] = {}
    for name, declared_steps in by_name.items():
        for step in declared_steps:
            if name in compensations:
                step = Step(step.name, step.message_type, step.handler, step.key, step.starts, step.compensate, compensations[name])
            existing = steps.get(step.message_type)
            if existing is not None and existing.name != name:
                raise TypeError(
                    f"{cls.__name__}: {step.message_type.__name__} is handled by both {existing.name} and {name}; "
                    "one message type, one step"
                )
            steps[step.message_type] = step
    return steps


# -- the outcome of one delivery -------------------------------------------------------------------


@dataclass(slots=True)
class SagaOutcome:
    """What delivering one message did to one saga: its status, and what it sent, scheduled and cancelled."""

    saga_type: str
    key: str | None
    status: Status
    step: str | None = None
    version: int = 0
    started: bool = False
    commands: list[Command] = field(default_factory=list)
    events: list[IntegrationEvent] = field(default_factory=list)
    deadlines: list[Deadline] = field(default_factory=list)
    #: Deadlines cancelled explicitly, as asked: message type names or deadline ids.
    cancelled: list[str] = field(default_factory=list)
    #: Why it ended (compensate's reason) or why the message was ignored.
    reason: str | None = None
    #: Steps whose compensations ran, newest first.
    compensated: list[str] = field(default_factory=list)
    instance: Saga | None = field(default=None, repr=False)


def decide(saga_type: type[S], instance: S | None, envelope: Envelope, message: Message) -> SagaOutcome:
    """The pure part of delivering ``message``: route, start or advance ``instance``, and say what it decided.

    ``instance`` is the running instance for the message's key (None if there is none); the
    runner and the test kit both call this, so a saga behaves the same in tests and in production.
    """
    step = saga_type._steps.get(type(message))
    if step is None:
        return SagaOutcome(saga_type.saga_type, None, "ignored", reason=f"{saga_type.saga_type} does not handle {message.message_name}")
    key = instance.key if instance is not None else key_of(step, message)
    if instance is None:
        if key is None:
            return SagaOutcome(saga_type.saga_type, None, "ignored", step=step.name, reason=f"{message.message_name} names no instance")
        if not step.starts:
            return SagaOutcome(
                saga_type.saga_type, key, "ignored", step=step.name,
                reason=f"no running {saga_type.saga_type} for key {key!r}, and {message.message_name} does not start one",
            )  # fmt: skip
        instance = saga_type(key)
        instance._correlation_id = envelope.correlation_id
        instance._started_at = envelope.occurred_at
        return instance._take_turn(step, envelope, message, started=True)
    return instance._take_turn(step, envelope, message, started=False)


def key_of(step: Step, message: Message) -> str | None:
    """The correlation key ``step`` takes from ``message`` (None: the message concerns no instance)."""
    if step.key is None:
        return None
    value = step.key(message)
    if value is None or value == "":
        return None
    return str(value)


# -- persisted instances ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SagaRecord:
    """A running saga instance as stored (state as plain JSON data)."""

    saga_type: str
    key: str
    saga_id: str
    version: int
    state: dict[str, Any]
    steps: list[str]
    history: list[dict[str, Any]]
    correlation_id: str
    started_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ArchivedSaga:
    """A finished saga instance: outcome, final state and the summary of what it handled."""

    saga_type: str
    key: str
    saga_id: str
    version: int
    outcome: str
    reason: str | None
    state: dict[str, Any]
    history: list[dict[str, Any]]
    correlation_id: str
    started_at: datetime
    completed_at: datetime


_SAGA_COLUMNS = "saga_type, saga_key, saga_id, version, state, steps, history, correlation_id, started_at, updated_at"
_PG_SAGA_COLUMNS = (
    "saga_type, saga_key, saga_id::text, version, state::text, steps::text, history::text, correlation_id, "
    "started_at, updated_at"
)
_ARCHIVE_COLUMNS = (
    "saga_type, saga_key, saga_id, version, outcome, reason, state, history, correlation_id, started_at, completed_at"
)
_PG_ARCHIVE_COLUMNS = (
    "saga_type, saga_key, saga_id::text, version, outcome, reason, state::text, history::text, correlation_id, "
    "started_at, completed_at"
)


async def list_sagas(store: Store, *, saga_type: str | None = None, limit: int = 100) -> list[SagaRecord]:
    """Running saga instances, most recently updated first."""
    columns = _PG_SAGA_COLUMNS if store.dialect == "postgresql" else _SAGA_COLUMNS
    where, params = ("WHERE saga_type = ? ", [saga_type]) if saga_type else ("", [])
    rows = await store.fetch(f"SELECT {columns} FROM tidings_sagas {where}ORDER BY updated_at DESC LIMIT ?", (*params, limit))
    return [_record(r) for r in rows]


async def list_archived(
    store: Store, *, saga_type: str | None = None, key: str | None = None, limit: int = 100
) -> list[ArchivedSaga]:
    """Finished saga instances, most recently finished first."""
    columns = _PG_ARCHIVE_COLUMNS if store.dialect == "postgresql" else _ARCHIVE_COLUMNS
    where, params = [], []
    if saga_type:
        where.append("saga_type = ?")
        params.append(saga_type)
    if key:
        where.append("saga_key = ?")
        params.append(key)
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    rows = await store.fetch(
        f"SELECT {columns} FROM tidings_saga_archive {clause}ORDER BY completed_at DESC LIMIT ?", (*params, limit)
    )
    return [
        ArchivedSaga(
            saga_type=r[0], key=r[1], saga_id=r[2], version=int(r[3]), outcome=r[4], reason=r[5],
            state=msgspec.json.decode(r[6]), history=msgspec.json.decode(r[7]), correlation_id=r[8],
            started_at=_as_datetime(r[9]), completed_at=_as_datetime(r[10]),
        )  # fmt: skip
        for r in rows
    ]


async def _load(tx: Store, saga_type: str, key: str) -> SagaRecord | None:
    columns = _PG_SAGA_COLUMNS if tx.dialect == "postgresql" else _SAGA_COLUMNS
    rows = await tx.fetch(f"SELECT {columns} FROM tidings_sagas WHERE saga_type = ? AND saga_key = ?", (saga_type, key))
    return _record(rows[0]) if rows else None


def _record(row: tuple[Any, ...]) -> SagaRecord:
    return SagaRecord(
        saga_type=row[0], key=row[1], saga_id=row[2], version=int(row[3]), state=msgspec.json.decode(row[4]),
        steps=msgspec.json.decode(row[5]), history=msgspec.json.decode(row[6]), correlation_id=row[7],
        started_at=_as_datetime(row[8]), updated_at=_as_datetime(row[9]),
    )  # fmt: skip


def _as_datetime(value: datetime | str) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


# -- the runner ------------------------------------------------------------------------------------


class SagaRunner:
    """Delivers messages to saga instances in the caller's transaction: load, decide, save state with outbox and deadlines.

    Plug it into a consumer (``for t, fn in runner.routes().items(): consumer.route(t, fn)``: one
    ``async (envelope, message, tx)`` per message type, run in the consumer's inbox transaction), or
    call ``await runner.handle(tx, envelope, message)`` from any transaction of your own.
    """

    def __init__(
        self,
        store: Store,
        sagas: Iterable[type[Saga]],
        *,
        context: str | None = None,
        registry: MessageRegistry | None = None,
        partitions: int = DEFAULT_PARTITIONS,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        retries: int = 10,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.store = store
        self.context = context
        self.registry = registry or MessageRegistry()
        self.partitions = partitions
        self.max_message_bytes = max_message_bytes
        self.retries = retries
        self.clock = clock
        self.sagas: dict[str, type[Saga]] = {}
        #: Racing updates lost and retried (after reloading) since the runner started.
        self.conflicts = 0
        self._routes: dict[type[Message], list[tuple[type[Saga], Step]]] = {}
        self._scheduled: asyncio.Event | None = None
        for saga_type in sagas:
            self.add(saga_type)

    def add(self, saga_type: type[Saga]) -> None:
        """Run ``saga_type`` too; its message types join the registry."""
        if not (isinstance(saga_type, type) and issubclass(saga_type, Saga)) or saga_type is Saga:
            raise TypeError(f"SagaRunner runs Saga subclasses, got {saga_type!r}")
        existing = self.sagas.get(saga_type.saga_type)
        if existing is saga_type:
            return
        if existing is not None:
            raise ValueError(
                f"two sagas are named {saga_type.saga_type!r}: {existing.__qualname__} and {saga_type.__qualname__}; "
                "give one of them name=... in its class statement"
            )
        steps = saga_type.steps()
        if not any(step.starts for step in steps.values()):
            raise TypeError(f"{saga_type.__name__} has no @starts step, so no instance could ever begin")
        saga_type._struct()  # fail now, not at the first save, if a state type cannot be encoded
        self.sagas[saga_type.saga_type] = saga_type
        for message_type, step in steps.items():
            self.registry.register(message_type)
            self._routes.setdefault(message_type, []).append((saga_type, step))

    @property
    def message_types(self) -> list[type[Message]]:
        """The message types that reach sagas from outside (those with a key): what a consumer subscribes to."""
        return [t for t, routes in self._routes.items() if any(step.key is not None for _, step in routes)]

    def routes(self) -> dict[type[Message], MessageHandler]:
        """One ``async (envelope, message, tx)`` callable per message type, for a consumer to run in its inbox transaction."""

        async def deliver(envelope: Envelope, message: Any, tx: Store) -> None:
            await self.handle(tx, envelope, message)

        return {message_type: deliver for message_type in self.message_types}

    def scheduled_signal(self) -> asyncio.Event:
        """Set when a saga of this runner schedules a deadline, so an embedded scheduler can look sooner."""
        if self._scheduled is None:
            self._scheduled = asyncio.Event()
        return self._scheduled

    # -- delivering ----------------------------------------------------------------------------

    async def handle(self, tx: Store, envelope: Envelope, message: Message) -> list[SagaOutcome]:
        """Deliver ``message`` to every saga that handles it, inside ``tx``; one outcome per saga type.

        A message no running instance waits for, and that starts none, is ignored (logged at
        debug level): late and unrelated events are normal in a distributed workflow.
        """
        routes = self._routes.get(type(message))
        if not routes:
            log.debug("no saga handles %s; ignored", message.message_name)
            return []
        outcomes = []
        for saga_type, step in routes:
            if step.key is None:
                # Deadline-only: it reaches its instance through the scheduler, which names the instance.
                log.debug("%s receives %s only as a deadline; ignored", saga_type.saga_type, message.message_name)
                continue
            key = key_of(step, message)
            if key is None:
                log.debug("%s names no %s instance (empty key); ignored", message.message_name, saga_type.saga_type)
                outcomes.append(SagaOutcome(saga_type.saga_type, None, "ignored", step=step.name, reason="empty key"))
                continue
            outcomes.append(await self._deliver(tx, saga_type, step, key, envelope, message))
        return outcomes

    async def dispatch(self, envelope: Envelope, message: Message) -> list[SagaOutcome]:
        """Like :meth:`handle`, in a transaction of its own (for callers that have none)."""
        async with self.store.transaction() as tx:
            return await self.handle(tx, envelope, message)

    async def fire(self, deadline: DeadlineRow, *, now: datetime | None = None) -> SagaOutcome | None:
        """Deliver one due deadline to its instance and mark it fired, in one transaction; None if no longer pending."""
        now = now or self.clock()
        saga_type = self.sagas.get(deadline.saga_type)
        if saga_type is None:
            known = ", ".join(sorted(self.sagas)) or "(none)"
            raise TidingsError(
                f"deadline {deadline.deadline_id} is for saga {deadline.saga_type!r}, which this runner does not run "
                f"(it runs: {known}) — start the scheduler with the application that defines it"
            )
        message = self.registry.decode(deadline.message_type, deadline.schema_version, deadline.payload)
        step = saga_type._steps.get(type(message))
        if step is None:
            raise TidingsError(f"{saga_type.saga_type} has no handler for its deadline message {deadline.message_type}")
        envelope = _envelope_decoder.decode(deadline.envelope)
        async with self.store.transaction() as tx:
            if not await mark_fired(tx, deadline.id, now):
                return None  # cancelled meanwhile, or another scheduler fired it
            outcome = await self._deliver(tx, saga_type, step, deadline.saga_key, envelope, message, saga_id=deadline.saga_id, now=now)
            if outcome.status == "ignored":
                await tx.run(
                    "UPDATE tidings_saga_deadlines SET fired_at = NULL, cancelled_at = ?, cancel_reason = ? WHERE id = ?",
                    (now, outcome.reason or "ignored", deadline.id),
                )
            return outcome

    async def _deliver(
        self,
        tx: Store,
        saga_type: type[Saga],
        step: Step,
        key: str,
        envelope: Envelope,
        message: Message,
        *,
        saga_id: str | None = None,
        now: datetime | None = None,
    ) -> SagaOutcome:
        attempt = 0
        while True:
            attempt += 1
            try:
                # Each attempt in a savepoint: a lost race leaves nothing behind, and the retry reloads.
                async with tx.transaction() as stx:
                    return await self._attempt(stx, saga_type, step, key, envelope, message, saga_id, now or self.clock())
            except ConcurrencyError as exc:
                self.conflicts += 1
                if attempt > self.retries:
                    raise
                log.debug("%s; reloading and retrying (attempt %d)", exc, attempt + 1)
            except Exception as exc:
                if not is_conflict(exc):
                    raise
                # A PostgreSQL deadlock or serialization failure is a lost race like any other.
                self.conflicts += 1
                if attempt > self.retries:
                    raise
                log.debug("%s %s: %s; retrying (attempt %d)", saga_type.saga_type, key, exc, attempt + 1)

    async def _attempt(
        self,
        tx: Store,
        saga_type: type[Saga],
        step: Step,
        key: str,
        envelope: Envelope,
        message: Message,
        saga_id: str | None,
        now: datetime,
    ) -> SagaOutcome:
        record = await _load(tx, saga_type.saga_type, key)
        if record is None and step.starts and saga_id is None:
            # A start that finds no instance may finish in the same turn and write only an archive
            # row, which no unique key guards (a restartable saga archives one key many times).
            # So the starts of a fresh instance queue on a lock and look again: a second one sees
            # the first's running row or archive row, never neither. Running instances need no
            # lock (their version guards every save); a fresh start pays two statements, once.
            await lock_until_commit(tx, _SAGA_LOCK_NAMESPACE, f"{saga_type.saga_type}\x1f{key}")
            record = await _load(tx, saga_type.saga_type, key)
        if saga_id is not None and (record is None or record.saga_id != saga_id):
            return SagaOutcome(saga_type.saga_type, key, "ignored", step=step.name, reason="the saga instance that scheduled it is gone")
        instance: Saga | None = None
        if record is not None:
            instance = saga_type._restore(record)
        elif step.starts and not saga_type.restartable and await self._finished_before(tx, saga_type, key):
            log.debug("%s %s finished before; %s does not start it again", saga_type.saga_type, key, message.message_name)
            return SagaOutcome(saga_type.saga_type, key, "ignored", step=step.name, reason="this instance finished before")
        outcome = decide(saga_type, instance, envelope, message)
        if outcome.status == "ignored":
            log.debug("%s: %s; ignored", message.message_name, outcome.reason)
            return outcome
        assert outcome.instance is not None
        await self._save(tx, outcome.instance, outcome, envelope, now, loaded=record)
        return outcome

    async def _finished_before(self, tx: Store, saga_type: type[Saga], key: str) -> bool:
        rows = await tx.fetch(
            "SELECT 1 FROM tidings_saga_archive WHERE saga_type = ? AND saga_key = ? LIMIT 1", (saga_type.saga_type, key)
        )
        return bool(rows)

    async def _save(
        self, tx: Store, instance: Saga, outcome: SagaOutcome, envelope: Envelope, now: datetime, *, loaded: SagaRecord | None
    ) -> None:
        saga_type = type(instance)
        effects = instance._effects
        source = saga_type.context or self.context or saga_type.saga_type
        # Every outgoing row is built (validated, size-checked) before anything is written.
        outbox = [self._entry(saga_type, instance, message, envelope, now, source, context=ctx) for message, ctx in effects.commands]
        outbox += [self._entry(saga_type, instance, event, envelope, now, source, topic=topic) for event, topic in effects.events]
        finished = outcome.status in ("completed", "compensated")
        expected = loaded.version if loaded else 0

        # Deadline rows before the saga row: firing a deadline locks its row, then the saga's.
        # Taking them in the same order here keeps the two from deadlocking on PostgreSQL.
        if finished:
            await cancel_deadlines(tx, instance._saga_id, now, f"saga {outcome.status}")
        else:
            for kind, value in effects.cancelled:
                await cancel_deadlines(
                    tx, instance._saga_id, now, f"cancelled by {outcome.step}",
                    message_type=value if kind == "type" else None, deadline_id=value if kind == "id" else None,
                )  # fmt: skip

        state, steps, history = instance._encode_state(), _json.encode(instance._steps_done), _json.encode(instance._history)
        if finished:
            if loaded is not None:
                deleted = await tx.run(
                    "DELETE FROM tidings_sagas WHERE saga_type = ? AND saga_key = ? AND version = ?",
                    (saga_type.saga_type, instance.key, expected),
                )
                if deleted != 1:
                    raise await self._conflict(tx, saga_type, instance.key, expected)
            await tx.run(
                "INSERT INTO tidings_saga_archive (saga_id, saga_type, saga_key, version, outcome, reason, state, history, "
                "correlation_id, started_at, completed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    instance._saga_id, saga_type.saga_type, instance.key, instance.version, outcome.status, outcome.reason,
                    state.decode(), history.decode(), instance._correlation_id, instance._started_at or now, now,
                ),
            )  # fmt: skip
        elif loaded is None:
            inserted = await tx.run(
                "INSERT INTO tidings_sagas (saga_type, saga_key, saga_id, version, state, steps, history, correlation_id, "
                "started_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (saga_type, saga_key) DO NOTHING",
                (
                    saga_type.saga_type, instance.key, instance._saga_id, instance.version, state.decode(), steps.decode(),
                    history.decode(), instance._correlation_id, instance._started_at or now, now,
                ),
            )  # fmt: skip
            if inserted != 1:
                raise await self._conflict(tx, saga_type, instance.key, 0)
        else:
            updated = await tx.run(
                "UPDATE tidings_sagas SET version = ?, state = ?, steps = ?, history = ?, updated_at = ? "
                "WHERE saga_type = ? AND saga_key = ? AND version = ?",
                (instance.version, state.decode(), steps.decode(), history.decode(), now, saga_type.saga_type, instance.key, expected),
            )
            if updated != 1:
                raise await self._conflict(tx, saga_type, instance.key, expected)

        if not finished and effects.scheduled:
            await insert_deadlines(tx, [self._deadline(instance, deadline_id, d, envelope, now, source) for deadline_id, d in effects.scheduled])
            self.scheduled_signal().set()
        if outbox:
            await tx.commit(Changes(outbox=outbox))

    def _entry(
        self,
        saga_type: type[Saga],
        instance: Saga,
        message: Message,
        envelope: Envelope,
        now: datetime,
        source: str,
        *,
        context: str | None = None,
        topic: str | None = None,
    ) -> OutboxEntry:
        if isinstance(message, Command):
            target = context or saga_type.context or self.context
            if not target:
                raise TidingsError(
                    f"{saga_type.saga_type} sent {message.message_name} but names no context to send it to — declare "
                    f"class {saga_type.__name__}(Saga, context='...'), pass SagaRunner(context=...), or send(command, context=...)"
                )
            topic = command_topic(target)
        # The saga's key partitions what it sends: one instance's commands and events stay in order.
        _, entry = outbox_entry(
            message, topic=topic or topic_of(type(message)), key=partition_key_of(message) or instance.key, source=source, cause=envelope,
            partitions=self.partitions, max_message_bytes=self.max_message_bytes, now=now,
        )  # fmt: skip
        return entry

    def _deadline(self, instance: Saga, deadline_id: str, deadline: Deadline, cause: Envelope, now: datetime, source: str) -> NewDeadline:
        message = deadline.message
        due_at = now + deadline.after
        # The envelope it will be delivered with: its id is the deadline's, so a trace shows the
        # deadline as one message caused by the message whose handler scheduled it.
        envelope = Envelope(
            event_id=deadline_id,
            event_type=message.message_name,
            schema_version=message.message_version,
            occurred_at=due_at,
            correlation_id=cause.correlation_id,
            causation_id=cause.event_id,
            user_id=cause.user_id,
            tenant=cause.tenant,
            source=source,
        )
        self.registry.validate(message)
        if personal_fields(type(message)):
            # A deadline row is not sealed (yet): refuse rather than keep personal data in plaintext.
            raise PersonalDataError(
                f"{message.message_name} has personal fields and cannot be scheduled as a deadline; "
                "schedule a message that carries ids and let its handler load the personal data"
            )
        return NewDeadline(
            deadline_id=deadline_id,
            saga_type=instance.saga_type,
            saga_key=instance.key,
            saga_id=instance._saga_id,
            message_type=message.message_name,
            schema_version=message.message_version,
            envelope=_json.encode(envelope),
            payload=self.registry.encode(message),
            due_at=due_at,
            created_at=now,
        )

    async def _conflict(self, tx: Store, saga_type: type[Saga], key: str, expected: int) -> ConcurrencyError:
        rows = await tx.fetch("SELECT version FROM tidings_sagas WHERE saga_type = ? AND saga_key = ?", (saga_type.saga_type, key))
        return ConcurrencyError(saga_type.saga_type, key, expected, int(rows[0][0]) if rows else None)
