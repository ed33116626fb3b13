"""Aggregates: consistency boundaries that check invariants and record domain events."""

from __future__ import annotations

import copy
import itertools
import typing
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from tidings.domain.errors import InvalidArguments
from tidings.domain.messages import DomainEvent

__all__ = ["Aggregate", "StateStoredAggregate", "EventSourcedAggregate", "applies"]

F = TypeVar("F", bound=Callable[..., None])
A = TypeVar("A", bound="Aggregate")

# One counter for the whole process: it lets the unit of work replay events recorded on several
# aggregates in the order they were recorded, without the aggregates knowing about each other.
_recording_order = itertools.count()

_RESERVED = frozenset({"id", "version"})
_IMMUTABLE = frozenset({int, float, str, bool, bytes, type(None)})


def applies(method: F) -> F:
    """Mark a method ``(self, event: SomeEvent) -> None`` as the one that applies ``SomeEvent`` to state."""
    method.__tidings_applies__ = True  # type: ignore[attr-defined]
    return method


class Aggregate:
    """Base of both persistence styles: an id, a version, recorded events waiting to be saved.

    State is declared as annotated class attributes with defaults, like a dataclass::

        class License(StateStoredAggregate):
            sold: bool = False

            def purchase(self, buyer: str) -> None:
                if self.sold:
                    raise DomainError(f"License {self.id} is already sold")
                self.record(LicensePurchased(buyer=buyer))

            @applies
            def _purchased(self, event: LicensePurchased) -> None:
                self.sold = True
    """

    aggregate_type: ClassVar[str] = "Aggregate"
    event_sourced: ClassVar[bool] = False
    #: Event-sourced aggregates only: write a snapshot every N versions (None: never).
    snapshot_every: ClassVar[int | None] = None

    id: str
    version: int

    _appliers_cache: ClassVar[dict[type[DomainEvent], Callable[[Any, Any], None]] | None] = None
    _fields_cache: ClassVar[dict[str, Any] | None] = None
    _defaults_cache: ClassVar[dict[str, Any] | None] = None

    def __init_subclass__(cls, *, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.aggregate_type = name or cls.__name__
        # Resolved lazily: annotations may name classes defined later in the user's module.
        cls._appliers_cache = None
        cls._fields_cache = None
        cls._defaults_cache = None

    def __init__(self, id: str) -> None:
        if not isinstance(id, str) or not id:
            raise InvalidArguments(f"needs a non-empty str id, got {id!r}", field="id", message_type=type(self).__name__)
        self.id = id
        self.version = 0
        self._pending: list[tuple[int, DomainEvent]] = []
        self._set_defaults(self.state_fields())

    def _set_defaults(self, fields: typing.Iterable[str]) -> None:
        defaults = type(self).state_defaults()
        for field in fields:
            default = defaults[field]
            # Deep, not shallow: a default like {"open": []} must not share its inner list
            # between instances (and with the class attribute itself). Immutable ones need no copy.
            setattr(self, field, default if type(default) in _IMMUTABLE else copy.deepcopy(default))

    # -- recording -----------------------------------------------------------------------------

    def record(self, event: DomainEvent) -> None:
        """Apply ``event`` to this aggregate's state and keep it to be saved with the unit of work."""
        if not isinstance(event, DomainEvent):
            raise TypeError(f"{type(self).__name__}.record takes a DomainEvent, got {type(event).__name__}")
        self._apply(event)
        self.version += 1
        self._pending.append((next(_recording_order), event))

    def _apply(self, event: DomainEvent) -> None:
        applier = self.appliers().get(type(event))
        if applier is not None:
            applier(self, event)
        elif self.event_sourced:
            raise TypeError(
                f"{type(self).__name__} is event-sourced but has no @applies method for "
                f"{type(event).__name__}; add one so its state can be rebuilt from history"
            )

    @property
    def pending_events(self) -> list[DomainEvent]:
        """Events recorded since the aggregate was loaded or last saved, oldest first."""
        return [event for _, event in self._pending]

    def take_pending(self) -> list[tuple[int, DomainEvent]]:
        """Hand the recorded events (with their recording order) to the caller and forget them."""
        pending, self._pending = self._pending, []
        return pending

    # -- state ---------------------------------------------------------------------------------

    @classmethod
    def state_fields(cls) -> dict[str, Any]:
        """The declared state attributes and their types (``id`` and ``version`` excluded)."""
        if cls._fields_cache is None:
            hints = typing.get_type_hints(cls)
            cls._fields_cache = {
                name: hint
                for name, hint in hints.items()
                if name not in _RESERVED
                and not name.startswith("_")
                and typing.get_origin(hint) is not ClassVar
                and hint is not ClassVar
            }
        return cls._fields_cache

    @classmethod
    def state_defaults(cls) -> dict[str, Any]:
        """Default value of each declared state attribute; attributes without one start as None."""
        if cls._defaults_cache is None:
            cls._defaults_cache = {name: getattr(cls, name, None) for name in cls.state_fields()}
        return cls._defaults_cache

    def state(self) -> dict[str, Any]:
        """This aggregate's state as a dict of its declared attributes."""
        return {name: getattr(self, name) for name in self.state_fields()}

    @classmethod
    def restore(cls: type[A], id: str, version: int, state: dict[str, Any]) -> A:
        """Rebuild an aggregate from a saved state (a row or a snapshot) without recording anything."""
        aggregate = cls.__new__(cls)
        aggregate.id = id
        aggregate.version = version
        aggregate._pending = []
        for field, value in state.items():
            setattr(aggregate, field, value)
        if len(state) < len(cls.state_fields()):
            aggregate._set_defaults(field for field in cls.state_fields() if field not in state)
        return aggregate

    def replay(self, events: typing.Iterable[DomainEvent]) -> None:
        """Apply stored events in order, advancing the version without recording them again."""
        for event in events:
            self._apply(event)
            self.version += 1

    @classmethod
    def appliers(cls) -> dict[type[DomainEvent], Callable[[Any, Any], None]]:
        """Map from event type to the ``@applies`` method that applies it, inherited methods included."""
        if cls._appliers_cache is None:
            table: dict[type[DomainEvent], Callable[[Any, Any], None]] = {}
            for klass in reversed(cls.__mro__):
                for attr in vars(klass).values():
                    if getattr(attr, "__tidings_applies__", False):
                        table[_event_type_of(klass, attr)] = attr
            cls._appliers_cache = table
        return cls._appliers_cache

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} v{self.version}>"


class StateStoredAggregate(Aggregate):
    """An aggregate saved as one row of state plus a version; its events go to the journal too."""


class EventSourcedAggregate(Aggregate):
    """An aggregate whose state is rebuilt from its own events (optionally from a snapshot onward)."""

    event_sourced: ClassVar[bool] = True


def _event_type_of(owner: type, method: Callable[..., None]) -> type[DomainEvent]:
    hints = typing.get_type_hints(method)
    hints.pop("return", None)
    params = list(hints.values())
    if len(params) != 1 or not (isinstance(params[0], type) and issubclass(params[0], DomainEvent)):
        raise TypeError(
            f"{owner.__name__}.{method.__name__}: an @applies method takes (self, event: SomeDomainEvent); "
            "annotate the event parameter with its DomainEvent class"
        )
    return params[0]
