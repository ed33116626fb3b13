"""Projections: read models kept from events, written in the same transaction as their checkpoint.

A projection declares its tables (DDL per dialect, with ``{table}`` placeholders) and one handler
per event type. Handlers write with :meth:`Projection.execute`; the writes are queued and sent
together when the batch is flushed, inside the transaction that also moves the checkpoint (the
projector's) or writes the inbox row (a consumer's). Because every statement names its tables
through placeholders, a rebuild can run the same handlers into fresh ``<table>__rebuild`` tables
while readers keep reading the live ones.
"""

from __future__ import annotations

import hashlib
import inspect
import re
import types
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar, Union

from tidings.domain.messages import Message
from tidings.messaging.envelope import Envelope
from tidings.messaging.registry import MessageRegistry
from tidings.runtime.projection_sql import Statement, WriteBatcher, statement_for
from tidings.store.base import Store
from tidings.store.names import component_name, sql_name

__all__ = ["Projection", "Target", "handles", "REBUILD_SUFFIX"]

F = TypeVar("F", bound=Callable[..., Any])

#: Which tables a handler writes to: the live ones readers see, or the fresh ones of a rebuild.
Target = Literal["live", "rebuild"]

#: A rebuild fills ``<table>__rebuild`` and swaps it in at the end.
REBUILD_SUFFIX = "__rebuild"

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Index and constraint names live in one namespace per schema: the rebuild's copies need names of
# their own, so a declared name must contain a table placeholder (``{licenses}_by_buyer``).
_NAMED_OBJECT = re.compile(r"\b(?:INDEX(?:\s+IF\s+NOT\s+EXISTS)?|CONSTRAINT)\s+(?!ON\b)([^\s(]+)", re.IGNORECASE)

#: What a consumer runs per message: ``async (envelope, event, tx) -> None``.
ConsumerHandler = Callable[[Envelope, Any, Store], Awaitable[None]]


def handles(method: F) -> F:
    """Mark ``(self, event: SomeEvent[, envelope: Envelope])`` as the projection's handler of ``SomeEvent``.

    The event type comes from the annotation (a union handles each of its members), as for
    ``@applies`` on aggregates.
    """
    method.__tidings_handles__ = True  # type: ignore[attr-defined]
    return method


@dataclass(frozen=True, slots=True)
class _Handler:
    event_type: type[Message]
    function: Callable[..., Any]
    wants_envelope: bool
    is_async: bool


class _Session:
    """The writes of one batch (or one consumed message) and the transaction they go to."""

    __slots__ = ("projection", "target", "tx", "writes")

    def __init__(self, projection: Projection, target: Target, tx: Store | None) -> None:
        self.projection = projection
        self.target = target
        self.tx = tx
        self.writes: list[tuple[str, Sequence[Any]]] = []

    async def flush(self) -> int:
        """Send the queued writes through the transaction; the number of statements the handlers asked for."""
        if not self.writes:
            return 0
        if self.tx is None:
            raise RuntimeError("a projection's writes are flushed inside a transaction; none is open")
        writes, self.writes = self.writes, []
        await self.projection._batcher.send(self.tx, self.projection._resolve, self.target, writes)
        return len(writes)


# The session of the batch the current task is applying; each task has its own, so a consumer
# that handles several keys at once, or a rebuild running beside the live projector, never mixes
# writes of one transaction into another.
_current: ContextVar[_Session | None] = ContextVar("tidings_projection_session", default=None)


class Projection:
    """Base of a read model: declare ``tables`` and ``@handles`` methods; the projector does the rest.

    ::

        class LicenseBoard(Projection, name="license_board"):
            tables = {
                "licenses": "CREATE TABLE {licenses} (license_id TEXT PRIMARY KEY, buyer TEXT, units INTEGER NOT NULL)",
            }

            @handles
            def offered(self, event: LicenseOffered, envelope: Envelope) -> None:
                self.execute("INSERT INTO {licenses} (license_id, buyer, units) VALUES (?, ?, ?)",
                             (envelope.aggregate_id, event.buyer, 0))

    ``{licenses}`` is replaced by the table the current batch writes to: ``licenses`` normally,
    ``licenses__rebuild`` during a rebuild. Values always travel as ``?`` parameters.
    """

    name: ClassVar[str] = "Projection"
    #: Table name → DDL naming it ``{name}`` (one string for both dialects, or ``{"sqlite": ..., "postgresql": ...}``).
    tables: ClassVar[Mapping[str, str | Mapping[str, str]]] = {}

    _handlers_cache: ClassVar[dict[str, _Handler] | None] = None

    def __init_subclass__(cls, *, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = component_name(cls.__name__ if name is None else name, "projection name")
        cls._handlers_cache = None  # resolved lazily: annotations may name classes defined later
        _check_tables(cls)

    def __init__(self, registry: MessageRegistry | None = None) -> None:
        """Use ``registry`` (the application's, for its upcasters) to read stored events; a fresh one otherwise."""
        self.registry = registry if registry is not None else MessageRegistry()
        for handler in self.handler_table().values():
            self.registry.register(handler.event_type)
        self._batcher = WriteBatcher()
        self._names: dict[Target, dict[str, str]] = {
            "live": {t: t for t in self.tables},
            "rebuild": {t: t + REBUILD_SUFFIX for t in self.tables},
        }

    # -- declarations --------------------------------------------------------------------------

    @classmethod
    def handler_table(cls) -> dict[str, _Handler]:
        """Message name → handler, inherited handlers included (a subclass's wins)."""
        if cls._handlers_cache is None:
            table: dict[str, _Handler] = {}
            for klass in reversed(cls.__mro__):
                for attr in vars(klass).values():
                    if getattr(attr, "__tidings_handles__", False):
                        for handler in _handlers_of(klass, attr):
                            table[handler.event_type.message_name] = handler
            cls._handlers_cache = table
        return cls._handlers_cache

    @property
    def event_types(self) -> frozenset[str]:
        """Names of the events this projection reads; the journal's other events are skipped unread."""
        return frozenset(self.handler_table())

    @property
    def needs_transaction(self) -> bool:
        """True if a handler is async (it may read with :meth:`fetch`, so it must run inside the transaction)."""
        return any(h.is_async for h in self.handler_table().values())

    def ddl(self, dialect: str, target: Target = "live") -> list[str]:
        """The statements that create this projection's tables in ``dialect``, named for ``target``."""
        names = self._names[target]
        statements = []
        for table, declared in self.tables.items():
            if isinstance(declared, Mapping):
                try:
                    text = declared[dialect]
                except KeyError:
                    raise ValueError(
                        f"projection {self.name}: table {table!r} declares DDL for {sorted(declared)}, not {dialect!r}"
                    ) from None
            else:
                text = declared
            statements.extend(_split(_PLACEHOLDER.sub(lambda m: names.get(m.group(1), m.group(0)), text)))
        return statements

    def fingerprint(self, dialect: str) -> str:
        """A short hash of the tables' DDL: when it changes, the live tables no longer match the code."""
        return hashlib.sha256("\n;\n".join(self.ddl(dialect)).encode()).hexdigest()[:16]

    # -- what handlers call --------------------------------------------------------------------

    def table(self, name: str) -> str:
        """The physical name of declared table ``name`` for the batch being applied (live outside one)."""
        session = _current.get()
        target: Target = session.target if session is not None and session.projection is self else "live"
        try:
            return self._names[target][name]
        except KeyError:
            raise KeyError(f"projection {self.name} declares no table {name!r}; it has {sorted(self.tables)}") from None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Queue one write (``{table}`` placeholders, ``?`` parameters) for this batch's transaction."""
        session = _current.get()
        if session is None or session.projection is not self:
            raise RuntimeError(
                f"{type(self).__name__}.execute() is for handlers: it writes in the transaction of the batch "
                "being applied. Outside a handler, use the store directly."
            )
        session.writes.append((sql, params))

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Read inside this batch's transaction (queued writes are sent first, so the handler reads its own writes)."""
        session = _current.get()
        if session is None or session.projection is not self or session.tx is None:
            raise RuntimeError(f"{type(self).__name__}.fetch() is for async handlers, inside the batch's transaction")
        await session.flush()
        statement = self._resolve(sql, session.target)
        return await session.tx.fetch(statement.sql, params)

    # -- plugging into a consumer --------------------------------------------------------------

    def handlers(self) -> dict[type[Message], ConsumerHandler]:
        """One ``async (envelope, event, tx)`` callable per handled type, for a consumer's inbox transaction."""
        return {handler.event_type: self.apply for handler in self.handler_table().values()}

    async def apply(self, envelope: Envelope, event: Any, tx: Store) -> None:
        """Apply one event to the live tables inside ``tx`` (a consumer's transaction); other types are ignored.

        The signature is a consumer route's: ``consumer.route(LicensePurchaseConfirmed, projection.apply)``.
        """
        handler = self.handler_table().get(getattr(type(event), "message_name", ""))
        if handler is None:
            return
        session = _Session(self, "live", tx)
        token = _current.set(session)
        try:
            result = handler.function(self, event, envelope) if handler.wants_envelope else handler.function(self, event)
            if handler.is_async:
                await result
            await session.flush()
        finally:
            _current.reset(token)

    # -- helpers for the projector -------------------------------------------------------------

    def _open(self, target: Target, tx: Store | None = None) -> tuple[_Session, Any]:
        session = _Session(self, target, tx)
        return session, _current.set(session)

    @staticmethod
    def _close(token: Any) -> None:
        _current.reset(token)

    def _resolve(self, sql: str, target: Target) -> Statement:
        return statement_for(sql, tuple(self._names[target].items()))

    def _forget_table_types(self) -> None:
        """Tables were created or swapped: column types learnt for batching must be looked up again."""
        self._batcher.forget()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} tables={sorted(self.tables)}>"


def _handlers_of(owner: type, method: Callable[..., Any]) -> list[_Handler]:
    hints = typing.get_type_hints(method)
    hints.pop("return", None)
    params = list(inspect.signature(method).parameters.values())[1:]
    wrong = TypeError(
        f"{owner.__name__}.{method.__name__}: a @handles method takes (self, event: SomeEvent) or "
        "(self, event: SomeEvent, envelope: Envelope); annotate the event parameter with its message class"
    )
    if not 1 <= len(params) <= 2 or params[0].name not in hints:
        raise wrong
    annotation = hints[params[0].name]
    members = typing.get_args(annotation) if typing.get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    if not members or not all(isinstance(m, type) and issubclass(m, Message) for m in members):
        raise wrong
    is_async = inspect.iscoroutinefunction(method)
    return [_Handler(member, method, len(params) == 2, is_async) for member in members]


def _check_tables(cls: type[Projection]) -> None:
    for table, declared in cls.tables.items():
        # Lowercase: the DDL names the table unquoted (PostgreSQL folds it to lowercase), the projector
        # quotes it when it drops and renames; both must mean the same table. The rebuild's copy
        # (with REBUILD_SUFFIX) must fit PostgreSQL's 63 bytes as well.
        sql_name(table, f"projection {cls.name}: table name", lowercase=True)
        sql_name(table + REBUILD_SUFFIX, f"projection {cls.name}: the rebuild table of {table!r}", lowercase=True)
        texts = declared.values() if isinstance(declared, Mapping) else [declared]
        for text in texts:
            if "{" + table + "}" not in text:
                raise TypeError(
                    f"projection {cls.name}: the DDL of table {table!r} must name it as {{{table}}} so a rebuild "
                    "can create a fresh copy"
                )
            for found in _NAMED_OBJECT.findall(text):
                if not _PLACEHOLDER.search(found):
                    raise TypeError(
                        f"projection {cls.name}: index or constraint {found!r} needs a table placeholder in its name, "
                        f"like {{{table}}}_{found}, so the rebuild's copy gets a name of its own"
                    )


def _split(sql: str) -> list[str]:
    # DDL with ';' inside string literals is not expected in table declarations.
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]
