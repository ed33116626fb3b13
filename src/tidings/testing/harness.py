"""An in-memory harness: one bounded context's application on a throwaway store, with no servers.

::

    async with await Harness.open(build) as h:          # build(store) -> Application
        await h.handle(PurchaseLicense(license_id="lic-1", buyer_id="ada"))
        await h.assert_published(LicensePurchaseConfirmed, license_id="lic-1")

Commands go through the real :class:`~tidings.app.Application` (validation, handlers, domain bus,
translators, one commit), so what the harness sees is what the journal and the outbox would hold
in production; only the relay and the broker are left out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar

import msgspec

from tidings.app.application import Application, CommandResult
from tidings.domain.messages import Command, DomainEvent, Message
from tidings.messaging.contracts import IntegrationEvent
from tidings.messaging.envelope import Envelope, MessageContext
from tidings.store.subject_keys import SubjectKeys
from tidings.messaging.registry import MessageRegistry
from tidings.store import open_store
from tidings.store.base import Store
from tidings.testing.diff import explain_fields, fields_of, one_line

__all__ = ["AppFactory", "Harness", "HarnessFactory"]

IE = TypeVar("IE", bound=IntegrationEvent)

#: Builds a bounded context's application on the store it is given (``examples.quickstart.application.build``).
AppFactory = Callable[[Store], Application]

#: The ``tidings_harness`` fixture: ``await tidings_harness(build)`` or ``await tidings_harness(build, store=...)``.
HarnessFactory = Callable[..., Awaitable["Harness"]]

MEMORY_URL = "sqlite:///:memory:"

# Store.read_outbox has no "after" argument; a harness outbox holds a test's worth of rows.
_WHOLE_OUTBOX = 2**31 - 1


class Harness:
    """Runs commands through an application and reads back what they committed, decoded."""

    def __init__(self, app: Application, *, owns_store: bool = False) -> None:
        self.app = app
        self._owns_store = owns_store
        self._journal_after = 0
        self._outbox_after = 0
        # Integration events are encoded by the unit of work without being registered anywhere,
        # so the harness keeps its own registry of the contract classes it had to look up.
        self._contracts = MessageRegistry()

    @classmethod
    async def open(cls, app_factory: AppFactory, *, store: Store | None = None) -> Harness:
        """A harness on ``app_factory(store)``; without ``store``, on a fresh in-memory SQLite store it closes."""
        owns_store = store is None
        if store is None:
            store = await open_store(MEMORY_URL)
        try:
            app = app_factory(store)
            if not isinstance(app, Application):
                raise TypeError(f"the app factory must return an Application, got {type(app).__name__}")
        except BaseException:
            if owns_store:
                await store.close()
            raise
        return cls(app, owns_store=owns_store)

    @property
    def store(self) -> Store:
        """The store the application writes to."""
        return self.app.store

    async def handle(self, command: Command, *, context: MessageContext | None = None) -> CommandResult:
        """Handle ``command`` exactly as the application would, in one transaction; errors propagate."""
        return await self.app.handle(command, context=context)

    async def events(self) -> list[DomainEvent]:
        """Domain events in the journal since the last :meth:`clear`, in commit order, decoded."""
        events: list[DomainEvent] = []
        after = self._journal_after
        while True:
            page = await self.store.read_journal(after)
            if not page:
                return events
            keys = SubjectKeys(self.store)
            await keys.prepare_payloads(stored.payload for stored in page)
            for stored in page:
                event = self.app.registry.decode(stored.event_type, stored.schema_version, stored.payload, keys)
                events.append(event)  # type: ignore[arg-type]
            after = page[-1].position

    async def published(self, topic: str | None = None) -> list[IntegrationEvent]:
        """Integration events in the outbox since the last :meth:`clear` (only ``topic``'s, if given), decoded."""
        return [event for _, event in await self._published(topic)]

    async def assert_published(self, event_type: type[IE], /, **fields: Any) -> IE:
        """Assert that an ``event_type`` with these field values was published; return the first such event."""
        __tracebackhide__ = True
        declared = _field_names(event_type)
        unknown = sorted(set(fields) - set(declared))
        if unknown:
            raise TypeError(f"{event_type.__name__} has no field {', '.join(unknown)}; it has: {', '.join(declared)}")
        published = await self._published(None)
        candidates = [event for _, event in published if isinstance(event, event_type)]
        for event in candidates:
            if all(bool(value == getattr(event, name)) for name, value in fields.items()):
                return event
        wanted = event_type.__name__ + (
            "(" + ", ".join(f"{name}={value!r}" for name, value in fields.items()) + ")" if fields else ""
        )
        lines = [f"no {wanted} was published"]
        if published:
            lines.append(f"published ({len(published)}):")
            lines += [f"  {i}. [{topic}] {one_line(event)}" for i, (topic, event) in enumerate(published, 1)]
        else:
            lines.append("nothing was published" + (" since the last clear()" if self._outbox_after else ""))
        if candidates:
            # The nearest miss names the differing fields, which is usually the whole story.
            nearest = min(candidates, key=lambda e: sum(not bool(v == getattr(e, n)) for n, v in fields.items()))
            headline = f"nearest {event_type.__name__}:"
            lines.append(explain_fields(headline, fields, fields_of(nearest) or {}, actual_label="published"))
        raise AssertionError("\n".join(lines))

    async def clear(self) -> None:
        """Forget what was committed so far: :meth:`events` and :meth:`published` show only what comes next."""
        after = self._journal_after
        while page := await self.store.read_journal(after):
            after = page[-1].position
        self._journal_after = after
        rows = await self.store.read_outbox(_WHOLE_OUTBOX)
        self._outbox_after = max((row.id for row in rows), default=self._outbox_after)

    async def close(self) -> None:
        """Close the store if the harness opened it."""
        if self._owns_store:
            await self.store.close()

    async def __aenter__(self) -> Harness:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- decoding --------------------------------------------------------------------------------

    async def _published(self, topic: str | None) -> list[tuple[str, IntegrationEvent]]:
        rows = await self.store.read_outbox(_WHOLE_OUTBOX)
        out = []
        keys = SubjectKeys(self.store)
        await keys.prepare_payloads(row.payload for row in rows if row.id > self._outbox_after)
        for row in rows:
            if row.id <= self._outbox_after or (topic is not None and row.topic != topic):
                continue
            envelope = msgspec.json.decode(row.envelope, type=Envelope)
            event = self._decode_contract(envelope.event_type, envelope.schema_version, row.payload, keys)
            out.append((row.topic, event))
        return out

    def _decode_contract(self, name: str, version: int, payload: bytes, keys: SubjectKeys) -> IntegrationEvent:
        if name in self.app.registry:
            return self.app.registry.decode(name, version, payload, keys)  # type: ignore[return-value]
        if name not in self._contracts:
            self._contracts.register(_contract_named(name, version))
        return self._contracts.decode(name, version, payload, keys)  # type: ignore[return-value]


def _field_names(message_type: type[Message]) -> list[str]:
    return [f.name for f in dataclasses.fields(message_type)] if dataclasses.is_dataclass(message_type) else []


def _contract_named(name: str, version: int) -> type[IntegrationEvent]:
    """The loaded IntegrationEvent class published as ``name`` (the one of ``version`` if several claim it)."""
    found: list[type[IntegrationEvent]] = []
    pending: list[type[IntegrationEvent]] = [IntegrationEvent]
    while pending:
        klass = pending.pop()
        pending.extend(klass.__subclasses__())
        if klass is not IntegrationEvent and klass.message_name == name:
            found.append(klass)
    if len(found) > 1:
        found = [klass for klass in found if klass.message_version == version] or found
    if len(found) != 1:
        where = ", ".join(f"{k.__module__}.{k.__qualname__}" for k in found) or "no loaded class"
        raise LookupError(
            f"cannot decode the published {name!r} v{version}: {where} claims that name — "
            "register the one you mean in the application's registry (app.registry.register(...))"
        )
    return found[0]
