"""Given/when/then for aggregates: given past events, when a method is called, then these events or that error.

::

    scenario(License).given(
        LicenseOffered(asset_id="a-1", price_cents=1500, allowed_uses=2),
        LicensePurchased(buyer_id="ada"),
    ).when(lambda lic: lic.purchase("bob")).then_raises(DomainError, match="already")

Everything runs in memory on the aggregate itself, exactly as the repository rebuilds it
(``restore`` then ``replay``), so a scenario needs no store and no application.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from tidings.domain.aggregate import Aggregate
from tidings.domain.messages import DomainEvent
from tidings.testing.diff import explain_difference, explain_fields, one_line, same_all

__all__ = ["Outcome", "Scenario", "scenario"]

A = TypeVar("A", bound=Aggregate)


def scenario(aggregate_type: type[A], id: str = "test-1") -> Scenario[A]:
    """Start a given/when/then specification of one aggregate of ``aggregate_type`` with id ``id``."""
    if not (isinstance(aggregate_type, type) and issubclass(aggregate_type, Aggregate)):
        raise TypeError(f"scenario() takes an Aggregate subclass, got {aggregate_type!r}")
    return Scenario(aggregate_type, id)


class Scenario(Generic[A]):
    """The "given" half: what happened to the aggregate before; immutable, so one can be shared by many tests."""

    def __init__(
        self,
        aggregate_type: type[A],
        id: str,
        *,
        state: dict[str, Any] | None = None,
        version: int = 0,
        history: tuple[DomainEvent, ...] = (),
    ) -> None:
        self.aggregate_type = aggregate_type
        self.id = id
        self._state = state
        self._version = version
        self._history = history

    def given(self, *events: DomainEvent) -> Scenario[A]:
        """A scenario whose aggregate has already had ``events`` (replayed in order, not recorded)."""
        for event in events:
            if not isinstance(event, DomainEvent):
                raise TypeError(f"given() takes domain events, got {type(event).__name__}: {event!r}")
        return Scenario(
            self.aggregate_type, self.id, state=self._state, version=self._version, history=self._history + events
        )

    def given_state(self, *, version: int = 1, **state: Any) -> Scenario[A]:
        """A scenario whose aggregate starts from saved state (for state-stored aggregates that set state directly)."""
        unknown = sorted(set(state) - set(self.aggregate_type.state_fields()))
        if unknown:
            known = ", ".join(sorted(self.aggregate_type.state_fields())) or "(none)"
            raise TypeError(
                f"{self.aggregate_type.__name__} has no state attribute {', '.join(unknown)}; it has: {known}"
            )
        if self._history:
            raise TypeError("given_state() comes before given(...): the events are replayed on top of the state")
        return Scenario(self.aggregate_type, self.id, state=dict(state), version=version)

    def build(self) -> A:
        """A fresh aggregate in the given state, with nothing pending; each call builds a new one."""
        # Deep-copied: a `when` that appends to a list in the state must not change the shared scenario.
        aggregate = self.aggregate_type.restore(self.id, self._version, copy.deepcopy(self._state or {}))
        aggregate.replay(self._history)
        return aggregate

    def when(self, action: Callable[[A], object]) -> Outcome[A]:
        """Call ``action(aggregate)`` and capture what it recorded, returned or raised.

        With nothing given, ``action`` may create the aggregate instead (``lambda _: License.offer(...)``):
        if it returns an aggregate of this type, that one is the aggregate under test.
        """
        aggregate = self.build()
        result: object = None
        error: Exception | None = None
        try:
            result = action(aggregate)
        except Exception as exc:  # any error is an outcome the "then" half may expect
            error = exc
        nothing_given = self._state is None and not self._history
        if nothing_given and isinstance(result, self.aggregate_type) and result is not aggregate:
            aggregate = result
        return Outcome(aggregate, result, error)


class Outcome(Generic[A]):
    """The "then" half: assertions on what ``when`` recorded, raised or left as state; each returns the outcome."""

    def __init__(self, aggregate: A, result: object, error: Exception | None) -> None:
        self.aggregate = aggregate
        self.result = result
        self.error = error
        #: The events recorded by ``when``, oldest first.
        self.events: list[DomainEvent] = aggregate.pending_events
        self._error_expected = False

    def then(self, *expected: DomainEvent) -> Outcome[A]:
        """Assert that ``when`` recorded exactly ``expected``, same types and fields, in order."""
        __tracebackhide__ = True
        self._no_unexpected_error(f"expected {_count(len(expected))}")
        if not same_all(expected, self.events):
            headline = f"{self._subject()}: the recorded events differ from the expected ones"
            raise AssertionError(explain_difference(headline, expected, self.events))
        return self

    def then_nothing(self) -> Outcome[A]:
        """Assert that ``when`` recorded no event."""
        __tracebackhide__ = True
        self._no_unexpected_error("expected no events")
        if self.events:
            headline = f"{self._subject()}: expected no events, but {_count(len(self.events))} recorded"
            raise AssertionError(explain_difference(headline, [], self.events))
        return self

    def then_raises(
        self, error_type: type[Exception] | tuple[type[Exception], ...] = Exception, *, match: str | None = None
    ) -> Outcome[A]:
        """Assert that ``when`` raised ``error_type`` whose message contains the regular expression ``match``."""
        __tracebackhide__ = True
        wanted = _error_name(error_type) + (f" matching {match!r}" if match else "")
        if self.error is None:
            recorded = "; it recorded " + ", ".join(one_line(e) for e in self.events) if self.events else ""
            raise AssertionError(f"{self._subject()}: expected {wanted}, but nothing was raised{recorded}")
        if not isinstance(self.error, error_type):
            raise AssertionError(
                f"{self._subject()}: expected {wanted}, but {type(self.error).__name__} was raised: {self.error}"
            ) from self.error
        if match is not None and not re.search(match, str(self.error)):
            raise AssertionError(
                f"{self._subject()}: {type(self.error).__name__} was raised, "
                f"but its message does not match {match!r}:\n  {self.error}"
            ) from self.error
        self._error_expected = True
        return self

    def then_state(self, predicate: Callable[[A], bool] | None = None, /, **attributes: Any) -> Outcome[A]:
        """Assert that ``predicate(aggregate)`` is true and each named state attribute equals the given value."""
        __tracebackhide__ = True
        self._no_unexpected_error("expected a state")
        unknown = sorted(set(attributes) - set(self.aggregate.state_fields()) - {"id", "version"})
        if unknown:
            raise TypeError(f"{type(self.aggregate).__name__} has no state attribute {', '.join(unknown)}")
        state = {"id": self.aggregate.id, "version": self.aggregate.version, **self.aggregate.state()}
        if predicate is not None and not predicate(self.aggregate):
            headline = f"{self._subject()}: the state does not satisfy the predicate"
            raise AssertionError(explain_fields(headline, {}, state))
        if any(not bool(value == state[name]) for name, value in attributes.items()):
            headline = f"{self._subject()}: the state differs from the expected"
            raise AssertionError(explain_fields(headline, attributes, state))
        return self

    def _subject(self) -> str:
        return f"{type(self.aggregate).__name__} {self.aggregate.id}"

    def _no_unexpected_error(self, what: str) -> None:
        __tracebackhide__ = True
        # After then_raises the error is the expected outcome, so "and it recorded nothing" still reads right.
        if self.error is not None and not self._error_expected:
            raise AssertionError(
                f"{self._subject()}: {what}, but when raised {type(self.error).__name__}: {self.error}"
            ) from self.error


def _count(n: int) -> str:
    return "no events" if n == 0 else f"{n} event" if n == 1 else f"{n} events"


def _error_name(error_type: type[Exception] | tuple[type[Exception], ...]) -> str:
    if isinstance(error_type, tuple):
        return " or ".join(t.__name__ for t in error_type)
    return error_type.__name__
