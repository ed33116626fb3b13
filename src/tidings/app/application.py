"""The application: command handlers, the in-transaction domain bus, translators, and the commit."""

from __future__ import annotations

import dataclasses
import inspect
from collections import deque
from contextlib import nullcontext
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec

from tidings.messaging.partitioning import DEFAULT_PARTITIONS, partition_of
from tidings.app.repository import Repository, stream_id_of
from tidings.app.unit_of_work import UnitOfWork
from tidings.domain.aggregate import Aggregate
from tidings.domain.errors import AggregateNotFound, ConcurrencyError, TidingsError
from tidings.domain.messages import Command, DomainEvent, Message
from tidings.messaging.contracts import IntegrationEvent
from tidings.messaging.envelope import Envelope, MessageContext, utc_now
from tidings.messaging.errors import MessageTooLarge
from tidings.messaging.ids import new_id
from tidings.messaging.personal import personal_fields, subjects_of
from tidings.messaging.registry import MessageRegistry, registry_of
from tidings.store.base import Store
from tidings.store.records import Changes, JournalEntry, OutboxEntry, SnapshotRow, StateRow, StreamWrite
from tidings.store.subject_keys import SubjectKeys
from tidings.telemetry import tracing

__all__ = ["Application", "CommandResult", "UnknownCommand", "DEFAULT_MAX_MESSAGE_BYTES"]

A = TypeVar("A", bound=Aggregate)
C = TypeVar("C", bound=Command)
E = TypeVar("E", bound=DomainEvent)

CommandHandler = Callable[[Any, UnitOfWork], Any]
EventHandler = Callable[[Any, UnitOfWork], Any]
Translator = Callable[[Any, Envelope], IntegrationEvent | Iterable[IntegrationEvent] | None]

#: Encoded payloads above this size are refused at write time (brokers have limits too: NATS 1 MiB).
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024

_envelope_encoder = msgspec.json.Encoder()


class UnknownCommand(TidingsError):
    """No handler is registered for this command type."""

    def __init__(self, command_type: type, known: Iterable[type]) -> None:
        names = ", ".join(sorted(t.__name__ for t in known)) or "(none)"
        super().__init__(
            f"no handler for {command_type.__name__}; registered: {names} — "
            f"decorate one with @app.command_handler({command_type.__name__})"
        )


@dataclass(slots=True)
class CommandResult:
    """What handling one command produced: the handler's return value and the envelopes committed."""

    value: Any
    command_id: str
    correlation_id: str
    events: list[Envelope] = field(default_factory=list)
    published: list[Envelope] = field(default_factory=list)


class Application:
    """One bounded context's write side: handles commands, each in exactly one transaction.

    Attributes:
        name: the bounded context's name, written as ``source`` on every envelope.
        store: the Store it reads and commits to (the same object its consumers must use for
            ``ctx.handle`` to join their transactions).
        registry: the MessageRegistry it encodes and decodes with (see the property).
        repository: loads aggregates of both persistence styles from ``store``.
    """

    def __init__(
        self,
        store: Store,
        *,
        name: str,
        registry: MessageRegistry | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        partitions: int = DEFAULT_PARTITIONS,
    ) -> None:
        self.name = name
        self.store = store
        # Without a registry of its own it shares its store's, so its consumers know its upcasters.
        self.repository = Repository(store, registry if registry is not None else registry_of(store))
        self.max_message_bytes = max_message_bytes
        self.partitions = partitions
        self._command_handlers: dict[type[Command], CommandHandler] = {}
        self._event_handlers: dict[type[DomainEvent], list[EventHandler]] = {}
        self._translators: dict[type[DomainEvent], list[tuple[Translator, str | None]]] = {}

    @property
    def registry(self) -> MessageRegistry:
        """The message registry this application reads and writes with.

        Unless the application was given one, it is the registry of its store
        (:func:`~tidings.messaging.registry_of`), shared with the consumers built on that store:
        an upcaster registered here is known to them too.
        """
        return self.repository.registry

    async def load(self, aggregate_type: type[A], aggregate_id: str, *, tenant: str | None = None) -> A:
        """The aggregate as last committed, outside any command (for queries and tests); AggregateNotFound if absent.

        With a ``tenant``, another tenant's aggregate is WrongTenant (an AggregateNotFound).
        """
        aggregate = await self.repository.load(aggregate_type, aggregate_id, SubjectKeys(self.store), tenant=tenant)
        if aggregate is None:
            raise AggregateNotFound(aggregate_type.aggregate_type, aggregate_id)
        return aggregate

    async def snapshot(self, aggregate_type: type[A], aggregate_id: str) -> A | None:
        """The event-sourced aggregate as its latest snapshot holds it (None if none was written yet), for tests and tools."""
        return await self.repository.snapshot(aggregate_type, aggregate_id)

    # -- registration --------------------------------------------------------------------------

    def command_handler(self, command_type: type[C]) -> Callable[[CommandHandler], CommandHandler]:
        """Decorator: ``fn(command, uow)`` (sync or async) handles ``command_type``; one handler per type."""

        def register(fn: CommandHandler) -> CommandHandler:
            if command_type in self._command_handlers:
                raise ValueError(f"{command_type.__name__} already has a handler; one command, one handler")
            self.registry.register(command_type)
            self._command_handlers[command_type] = fn
            return fn

        return register

    def on(self, event_type: type[E]) -> Callable[[EventHandler], EventHandler]:
        """Decorator: ``fn(event, uow)`` runs inside the same transaction whenever ``event_type`` is recorded."""

        def register(fn: EventHandler) -> EventHandler:
            self.registry.register(event_type)
            self._event_handlers.setdefault(event_type, []).append(fn)
            return fn

        return register

    def translator(self, event_type: type[E], *, topic: str | None = None) -> Callable[[Translator], Translator]:
        """Decorator: ``fn(event, envelope)`` returns integration event(s) for the outbox of the same transaction."""

        def register(fn: Translator) -> Translator:
            if inspect.iscoroutinefunction(fn):
                raise TypeError(
                    f"translator {fn.__qualname__} is async; translators are plain functions of (event, envelope). "
                    f"For work that needs I/O, use @app.on({event_type.__name__}) and uow.publish(...)"
                )
            self.registry.register(event_type)
            self._translators.setdefault(event_type, []).append((fn, topic))
            return fn

        return register

    # -- handling ------------------------------------------------------------------------------

    async def handle(self, command: Command, *, context: MessageContext | None = None, retries: int = 0) -> CommandResult:
        """Validate ``command``, run its handler and everything it triggers, and commit it all at once.

        The command is first converted to its declared field types (see ``MessageRegistry.validate``);
        its ``validate()`` rules, the handler and everything downstream see the converted command.
        ``retries`` re-runs the whole command (reloading every aggregate) after a ConcurrencyError.
        """
        command = self.registry.validate(command)
        handler = self._command_handlers.get(type(command))
        if handler is None:
            raise UnknownCommand(type(command), self._command_handlers)
        context = context or MessageContext()
        # Checked once per command: without an SDK no span, attribute or traceparent is built.
        traced = tracing.tracing_enabled()
        with tracing.command_span(self.name, command.message_name) if traced else nullcontext():
            for attempt in range(retries + 1):
                try:
                    # Lazy: SQL a handler runs (uow.execute, store.run from a bus handler) begins a
                    # transaction that the commit joins; without any, the commit stays one statement.
                    async with self.store.pinned(), self.store.transaction(lazy=True):
                        return await self._handle_once(command, handler, context, traced)
                except ConcurrencyError:
                    if attempt == retries:
                        raise
        raise AssertionError("unreachable")

    async def _handle_once(
        self, command: Command, handler: CommandHandler, context: MessageContext, traced: bool = False
    ) -> CommandResult:
        command_id = new_id()
        unit = _Commit(self, context, command_id, command.message_name, traced)
        uow = UnitOfWork(self, unit.keys)
        uow.tenant = context.tenant
        # The command causes its events; what caused the command (a consumer's message) goes on
        # those events as command_causation_id, so a trace leads message → command → events.
        uow.causation_id = command_id
        value = await _maybe_await(handler(command, uow))
        if isinstance(value, Aggregate) and value not in uow.aggregates:
            uow.add(value)  # returning a new aggregate saves it, so it cannot be forgotten
        uow.resolve_keys()

        # Breadth first: the command's events, then what their handlers recorded, and so on.
        queue = deque(unit.collect(uow))
        while queue:
            envelope, event = queue.popleft()
            uow.causation_id, uow.cause = envelope.event_id, envelope
            for event_handler in self._event_handlers.get(type(event), ()):
                await _maybe_await(event_handler(event, uow))
            for translate, topic in self._translators.get(type(event), ()):
                for integration_event in _as_list(translate(event, envelope)):
                    uow.publish(integration_event, topic=topic)
            queue.extend(unit.collect(uow))

        changes = unit.changes(uow)
        await unit.seal(changes)
        try:
            await self.store.commit(changes)
        except BaseException as exc:
            tracing.end_spans(unit.spans, exc)
            raise
        tracing.end_spans(unit.spans)
        return CommandResult(value, command_id, unit.correlation_id, unit.events, unit.published)


class _Commit:
    """Turns what a unit of work recorded into envelopes and rows, numbering versions as it goes."""

    def __init__(
        self, app: Application, context: MessageContext, command_id: str, command_type: str, traced: bool = False
    ) -> None:
        self.app = app
        self.traced = traced
        #: The command span's trace context, written on its domain events (projectors link to it).
        self.traceparent = tracing.current_traceparent() if traced else None
        #: The create span of each outbox row, ended when the commit succeeded or failed.
        self.spans: list[Any] = []
        self.context = context
        self.command_id = command_id
        self.command_type = command_type
        self.correlation_id = context.correlation_id or command_id
        self.now = utc_now()
        self.next_version: dict[int, int] = {}
        self.journal: list[JournalEntry] = []
        self.events: list[Envelope] = []
        self.published: list[Envelope] = []
        #: The subject keys of this unit of work (fetched once per subject, for this unit only).
        self.keys = SubjectKeys(app.store)
        #: Rows holding personal fields, sealed just before the commit: (list, index, message or (class, state)).
        self._personal: list[tuple[list[Any], int, Any]] = []

    def _envelope(self, message: Message, causation_id: str, aggregate: tuple[str, str, int] | None) -> Envelope:
        return Envelope(
            event_id=new_id(),
            event_type=message.message_name,
            schema_version=message.message_version,
            occurred_at=self.now,
            aggregate_type=aggregate[0] if aggregate else None,
            aggregate_id=aggregate[1] if aggregate else None,
            aggregate_version=aggregate[2] if aggregate else None,
            correlation_id=self.correlation_id,
            causation_id=causation_id,
            user_id=self.context.user_id,
            tenant=self.context.tenant,
            source=self.app.name,
            # Only the command's own events name it: they are the link from its cause to it.
            command_type=self.command_type if causation_id == self.command_id else None,
            command_causation_id=self.context.causation_id if causation_id == self.command_id else None,
            traceparent=self.traceparent,
        )

    def _traced(self, envelope: Envelope, topic: str) -> Envelope:
        """``envelope`` with the traceparent of a new create span for its outbox row (kept to end after the commit)."""
        span = tracing.start_create_span(
            topic, envelope.event_id, envelope.event_type, envelope.correlation_id,
            envelope.aggregate_type, envelope.aggregate_id, self.app.name,
        )
        self.spans.append(span)
        return msgspec.structs.replace(envelope, traceparent=tracing.traceparent_of(span))

    def _payload(self, message: Message) -> bytes:
        payload = self.app.registry.encode_checked(message)
        if len(payload) > self.app.max_message_bytes:
            raise MessageTooLarge(message.message_name, len(payload), self.app.max_message_bytes)
        return payload

    def collect(self, uow: UnitOfWork) -> list[tuple[Envelope, DomainEvent]]:
        """Envelope and journal the events recorded since the last call, in recording order."""
        recorded = []
        for aggregate, loaded in uow.tracked():
            pending = aggregate.take_pending()
            if pending:
                version = self.next_version.get(id(aggregate), loaded)
                for order, event in pending:
                    version += 1
                    recorded.append((order, aggregate, version, event))
                self.next_version[id(aggregate)] = version
        recorded.sort(key=lambda item: item[0])
        out = []
        for _, aggregate, version, event in recorded:
            self.app.registry.register(type(event))
            envelope = self._envelope(event, uow.causation_id, (aggregate.aggregate_type, aggregate.id, version))
            payload = self._payload(event)
            self.journal.append(
                JournalEntry(
                    stream_id=stream_id_of(aggregate.aggregate_type, aggregate.id),
                    stream_version=version,
                    event_id=envelope.event_id,
                    event_type=envelope.event_type,
                    schema_version=envelope.schema_version,
                    occurred_at=self.now,
                    correlation_id=self.correlation_id,
                    envelope=_envelope_encoder.encode(envelope),
                    payload=payload,
                )
            )
            if personal_fields(type(event)):
                self._personal.append((self.journal, len(self.journal) - 1, event))
            self.events.append(envelope)
            out.append((envelope, event))
        return out

    def changes(self, uow: UnitOfWork) -> Changes:
        """The rows to commit: journal, state or snapshots of each changed aggregate, and the outbox."""
        changes = Changes(journal=self.journal)
        repository = self.app.repository
        for aggregate, loaded in uow.tracked():
            if aggregate.version == loaded:
                continue
            stream_id = stream_id_of(aggregate.aggregate_type, aggregate.id)
            changes.streams.append(StreamWrite(aggregate.aggregate_type, aggregate.id, stream_id, loaded))
            every = aggregate.snapshot_every
            if not aggregate.event_sourced:
                state = repository.codec(type(aggregate)).encode_checked(aggregate)
                changes.states.append(
                    StateRow(aggregate.aggregate_type, aggregate.id, aggregate.version, state, self.context.tenant)
                )
                if personal_fields(type(aggregate)):
                    self._personal.append((changes.states, len(changes.states) - 1, (type(aggregate), aggregate.state())))
            elif every and aggregate.version // every > loaded // every:
                state = repository.codec(type(aggregate)).encode_checked(aggregate)
                changes.snapshots.append(SnapshotRow(stream_id, aggregate.version, state, self.context.tenant))
                if personal_fields(type(aggregate)):
                    self._personal.append((changes.snapshots, len(changes.snapshots) - 1, (type(aggregate), aggregate.state())))
        for publication in uow.publications:
            assert publication.partition_key is not None  # keyed by UnitOfWork.resolve_keys
            cause = publication.cause
            about = publication.about
            aggregate = (
                (cause.aggregate_type, cause.aggregate_id, cause.aggregate_version)
                if cause is not None and cause.aggregate_type and cause.aggregate_id and cause.aggregate_version
                else (about.aggregate_type, about.id, about.version)
                if about is not None and about.version
                else None
            )
            # Registered as they are published, so whatever reads this outbox back can decode them.
            self.app.registry.register(type(publication.event))
            envelope = self._envelope(publication.event, publication.causation_id, aggregate)
            if self.traced:
                envelope = self._traced(envelope, publication.topic)
            self.published.append(envelope)
            changes.outbox.append(
                OutboxEntry(
                    event_id=envelope.event_id,
                    partition=partition_of(publication.partition_key, self.app.partitions),
                    partition_key=publication.partition_key,
                    topic=publication.topic,
                    event_type=envelope.event_type,
                    envelope=_envelope_encoder.encode(envelope),
                    payload=self._payload(publication.event),
                )
            )
            if personal_fields(type(publication.event)):
                self._personal.append((changes.outbox, len(changes.outbox) - 1, publication.event))
        return changes

    async def seal(self, changes: Changes) -> None:
        """Replace the plaintext of every personal field in ``changes`` by its sealed form, keys fetched in one go."""
        if not self._personal:
            return
        subjects = [s for _, _, obj in self._personal for s in subjects_of(obj, _name_of(obj))]
        await self.keys.prepare_subjects(subjects, f"{_name_of(self._personal[0][2])}, which has personal fields,")
        for rows, index, obj in self._personal:
            sealed = self.keys.seal(obj, _name_of(obj))
            row = rows[index]
            if isinstance(row, (StateRow, SnapshotRow)):
                rows[index] = dataclasses.replace(row, state=sealed)
            else:
                if len(sealed) > self.app.max_message_bytes:
                    raise MessageTooLarge(row.event_type, len(sealed), self.app.max_message_bytes)
                rows[index] = dataclasses.replace(row, payload=sealed)


def _name_of(obj: Any) -> str:
    if isinstance(obj, tuple):
        return f"the state of {obj[0].aggregate_type}"
    return str(obj.message_name)


async def _maybe_await(value: Any | Awaitable[Any]) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def _as_list(value: IntegrationEvent | Iterable[IntegrationEvent] | None) -> list[IntegrationEvent]:
    if value is None:
        return []
    if isinstance(value, IntegrationEvent):
        return [value]
    return list(value)
