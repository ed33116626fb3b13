"""Given/when/then for sagas: given past messages, when one more arrives, then these commands, events, deadlines.

::

    saga_scenario(AssetProcessing).given(
        AssetUploaded(asset_id="a-1", title="Dunes"),
    ).when(MetadataExtracted(asset_id="a-1", width=800, height=600, format="jpeg")).then_sends(
        IndexAsset(asset_id="a-1"),
    )

The scenario runs the very decision the saga runner runs (:func:`tidings.runtime.sagas.decide`),
in memory: no store, no outbox, no clock. Deadlines are kept as the runner would keep them
(scheduled, cancelled, dropped on completion), and ``when_due`` delivers one as the scheduler would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from unittest.mock import ANY

from tidings.domain.messages import Message
from tidings.messaging.envelope import Envelope
from tidings.messaging.ids import new_id
from tidings.runtime.sagas import Deadline, Saga, SagaOutcome, decide, key_of
from tidings.testing.diff import explain_difference, explain_fields, one_line, same_all

__all__ = ["SagaScenario", "SagaThen", "saga_scenario"]

S = TypeVar("S", bound=Saga)

#: Scenario time starts here, so state that keeps timestamps is the same on every run.
SCENARIO_START = datetime(2030, 1, 1, tzinfo=UTC)
_CORRELATION = "scenario"


def saga_scenario(saga_type: type[S]) -> SagaScenario[S]:
    """Start a given/when/then specification of one instance of ``saga_type``."""
    if not (isinstance(saga_type, type) and issubclass(saga_type, Saga)) or saga_type is Saga:
        raise TypeError(f"saga_scenario() takes a Saga subclass, got {saga_type!r}")
    return SagaScenario(saga_type)


@dataclass(slots=True)
class _Pending:
    deadline_id: str
    due_at: datetime
    deadline: Deadline


@dataclass(slots=True)
class _World:
    """One instance's life so far, as the runner and scheduler would have left it."""

    instance: Any = None
    key: str | None = None
    finished: bool = False
    now: datetime = SCENARIO_START
    pending: list[_Pending] = field(default_factory=list)


class SagaScenario(Generic[S]):
    """The "given" half: the messages the saga instance has already handled; immutable, so tests may share one."""

    def __init__(self, saga_type: type[S], history: tuple[Message, ...] = ()) -> None:
        self.saga_type = saga_type
        self._history = history

    def given(self, *messages: Message) -> SagaScenario[S]:
        """A scenario whose instance has already handled ``messages`` (a deadline message counts as fired)."""
        for message in messages:
            if not isinstance(message, Message):
                raise TypeError(f"given() takes messages, got {type(message).__name__}: {message!r}")
        return SagaScenario(self.saga_type, self._history + messages)

    def when(self, message: Message) -> SagaThen[S]:
        """Deliver ``message`` as the runner would and capture what the saga decided (or raised)."""
        world = self._replay()
        return self._deliver(world, message)

    def when_due(self, message_type: type[Message]) -> SagaThen[S]:
        """Let the earliest pending deadline of ``message_type`` fire, as the scheduler would."""
        world = self._replay()
        due = [p for p in world.pending if type(p.deadline.message) is message_type]
        if not due:
            pending = ", ".join(f"{one_line(p.deadline.message)} after {p.deadline.after}" for p in world.pending) or "none"
            raise AssertionError(
                f"{self._subject(world)}: no pending deadline of {message_type.__name__} to fire; pending deadlines: {pending}"
            )
        first = min(due, key=lambda p: p.due_at)
        world.now = max(world.now, first.due_at)
        world.pending.remove(first)
        return self._deliver(world, first.deadline.message)

    # -- running -----------------------------------------------------------------------------------

    def _replay(self) -> _World:
        world = _World()
        for message in self._history:
            try:
                outcome = self._decide(world, message)
            except Exception as exc:
                raise AssertionError(
                    f"{self.saga_type.__name__}: given {one_line(message)} raised {type(exc).__name__}: {exc}"
                ) from exc
            if outcome.status == "ignored":
                raise AssertionError(
                    f"{self.saga_type.__name__}: given {one_line(message)} was ignored ({outcome.reason}); "
                    "a scenario's given messages must reach its instance — start it with a message its @starts step handles"
                )
            self._apply(world, outcome)
        return world

    def _decide(self, world: _World, message: Message) -> SagaOutcome:
        step = self.saga_type.steps().get(type(message))
        if step is not None and step.key is None:
            # A deadline message: the scheduler hands it to the instance that scheduled it.
            if world.instance is None:
                return SagaOutcome(self.saga_type.saga_type, world.key, "ignored", reason="no running instance to receive it")
            return decide(self.saga_type, world.instance, self._envelope(world, message), message)
        key = key_of(step, message) if step is not None else None
        if world.key is not None and key is not None and key != world.key:
            raise AssertionError(
                f"{self.saga_type.__name__}: {one_line(message)} is for key {key!r}, but this scenario follows {world.key!r}; "
                "a scenario follows one instance"
            )
        if world.finished and world.instance is None and step is not None and step.starts and not self.saga_type.restartable:
            return SagaOutcome(self.saga_type.saga_type, key, "ignored", step=step.name, reason="this instance finished before")
        return decide(self.saga_type, world.instance, self._envelope(world, message), message)

    def _apply(self, world: _World, outcome: SagaOutcome) -> None:
        instance = outcome.instance
        world.key = outcome.key or world.key
        if outcome.status in ("completed", "compensated"):
            world.instance, world.finished, world.pending = None, True, []
            return
        world.instance = instance
        assert instance is not None
        for kind, value in instance._effects.cancelled:
            world.pending = [
                p for p in world.pending
                if not (p.deadline_id == value if kind == "id" else p.deadline.message.message_name == value)
            ]  # fmt: skip
        for deadline_id, deadline in instance._effects.scheduled:
            world.pending.append(_Pending(deadline_id, world.now + deadline.after, deadline))

    def _deliver(self, world: _World, message: Message) -> SagaThen[S]:
        outcome: SagaOutcome | None = None
        error: Exception | None = None
        try:
            outcome = self._decide(world, message)
        except AssertionError:
            raise
        except Exception as exc:  # any error is an outcome the "then" half may expect
            error = exc
        if outcome is not None and outcome.status != "ignored":
            self._apply(world, outcome)
        return SagaThen(self.saga_type, world.key, message, outcome, error, [p.deadline for p in world.pending])

    def _envelope(self, world: _World, message: Message) -> Envelope:
        return Envelope(
            event_id=new_id(),
            event_type=message.message_name,
            schema_version=message.message_version,
            occurred_at=world.now,
            correlation_id=_CORRELATION,
            source="scenario",
        )

    def _subject(self, world: _World) -> str:
        return f"{self.saga_type.__name__} {world.key}" if world.key else self.saga_type.__name__


class SagaThen(Generic[S]):
    """The "then" half: assertions on what the saga decided; each returns itself, so they chain."""

    def __init__(
        self,
        saga_type: type[S],
        key: str | None,
        message: Message,
        outcome: SagaOutcome | None,
        error: Exception | None,
        pending: list[Deadline],
    ) -> None:
        self.saga_type = saga_type
        self.key = key
        self.message = message
        self.outcome = outcome
        self.error = error
        #: Deadlines still pending after ``when`` (scheduled before or now, not cancelled, not fired).
        self.pending = pending
        self._error_expected = False

    @property
    def instance(self) -> S | None:
        """The saga instance after ``when`` (also when it has just finished); None if the message was ignored."""
        return self.outcome.instance if self.outcome is not None else None  # type: ignore[return-value]

    # -- messages ----------------------------------------------------------------------------------

    def then_sends(self, *commands: Message) -> SagaThen[S]:
        """Assert that ``when`` sent exactly ``commands`` (same types and fields), in order."""
        __tracebackhide__ = True
        actual = self._outcome("expected commands").commands
        if not same_all(commands, actual):
            raise AssertionError(
                explain_difference(
                    f"{self._subject()}: the commands sent differ from the expected ones",
                    commands, actual, noun="command", actual_label="sent",
                )  # fmt: skip
            )
        return self

    def then_publishes(self, *events: Message) -> SagaThen[S]:
        """Assert that ``when`` published exactly ``events`` (same types and fields), in order."""
        __tracebackhide__ = True
        actual = self._outcome("expected integration events").events
        if not same_all(events, actual):
            raise AssertionError(
                explain_difference(
                    f"{self._subject()}: the integration events published differ from the expected ones",
                    events, actual, noun="event", actual_label="published",
                )  # fmt: skip
            )
        return self

    def then_schedules(self, *deadlines: Deadline | Message) -> SagaThen[S]:
        """Assert that ``when`` scheduled exactly these deadlines; a bare message matches whatever its delay."""
        __tracebackhide__ = True
        actual = self._outcome("expected deadlines").deadlines
        expected = [d if isinstance(d, Deadline) else Deadline(after=ANY, message=d) for d in deadlines]
        if not same_all(expected, actual):
            raise AssertionError(
                explain_difference(
                    f"{self._subject()}: the deadlines scheduled differ from the expected ones",
                    expected, actual, noun="deadline", actual_label="scheduled",
                )  # fmt: skip
            )
        return self

    def then_cancels(self, *deadlines: type[Message] | str) -> SagaThen[S]:
        """Assert that ``when`` explicitly cancelled exactly these deadlines (message classes or deadline ids)."""
        __tracebackhide__ = True
        actual = self._outcome("expected cancelled deadlines").cancelled
        expected = [d.message_name if isinstance(d, type) else d for d in deadlines]
        if expected != actual:
            raise AssertionError(
                explain_difference(
                    f"{self._subject()}: the deadlines cancelled differ from the expected ones",
                    expected, actual, noun="cancellation", actual_label="cancelled",
                )  # fmt: skip
            )
        return self

    def then_nothing(self) -> SagaThen[S]:
        """Assert that ``when`` sent, published, scheduled and cancelled nothing (the state may still change)."""
        __tracebackhide__ = True
        outcome = self._outcome("expected nothing to be sent")
        if outcome.commands or outcome.events or outcome.deadlines or outcome.cancelled:
            raise AssertionError(f"{self._subject()}: expected nothing to be sent, but {self._did(outcome)}")
        return self

    # -- lifecycle ---------------------------------------------------------------------------------

    def then_completed(self) -> SagaThen[S]:
        """Assert that ``when`` completed the saga (it will be archived, its deadlines cancelled)."""
        __tracebackhide__ = True
        self._expect_status("completed", "expected the saga to complete")
        return self

    def then_compensated(self, *, reason: str | None = None, steps: list[str] | None = None) -> SagaThen[S]:
        """Assert that ``when`` compensated (optionally: with a reason matching ``reason``, undoing ``steps`` newest first)."""
        __tracebackhide__ = True
        outcome = self._expect_status("compensated", "expected the saga to compensate")
        if reason is not None and not re.search(reason, outcome.reason or ""):
            raise AssertionError(f"{self._subject()}: compensated, but the reason {outcome.reason!r} does not match {reason!r}")
        if steps is not None and steps != outcome.compensated:
            raise AssertionError(
                explain_difference(
                    f"{self._subject()}: the steps compensated differ from the expected ones",
                    steps, outcome.compensated, noun="step", actual_label="compensated",
                )  # fmt: skip
            )
        return self

    def then_running(self) -> SagaThen[S]:
        """Assert that the saga handled ``when`` and is still running."""
        __tracebackhide__ = True
        outcome = self._outcome("expected the saga to keep running")
        if outcome.status not in ("started", "advanced"):
            raise AssertionError(f"{self._subject()}: expected the saga to keep running, but it {_status_words(outcome)}")
        return self

    def then_ignored(self) -> SagaThen[S]:
        """Assert that ``when`` reached no instance (no running one for its key, and it starts none)."""
        __tracebackhide__ = True
        outcome = self._outcome("expected the message to be ignored")
        if outcome.status != "ignored":
            raise AssertionError(
                f"{self._subject()}: expected {type(self.message).__name__} to be ignored, but it {_status_words(outcome)}; "
                f"{self._did(outcome)}"
            )
        return self

    def then_state(self, **fields: Any) -> SagaThen[S]:
        """Assert that each named state attribute of the instance equals the given value after ``when``."""
        __tracebackhide__ = True
        self._outcome("expected a state")
        instance = self.instance
        if instance is None:
            raise AssertionError(f"{self._subject()}: expected a state, but the message reached no instance")
        unknown = sorted(set(fields) - set(instance.state_fields()))
        if unknown:
            raise TypeError(f"{type(instance).__name__} has no state attribute {', '.join(unknown)}")
        state = instance.state()
        if any(not bool(value == state[name]) for name, value in fields.items()):
            raise AssertionError(explain_fields(f"{self._subject()}: the state differs from the expected", fields, state))
        return self

    def then_raises(self, error_type: type[Exception] = Exception, *, match: str | None = None) -> SagaThen[S]:
        """Assert that the handler raised ``error_type`` with a message matching the regular expression ``match``."""
        __tracebackhide__ = True
        if self.error is None:
            did = self._did(self.outcome) if self.outcome else "did nothing"
            raise AssertionError(f"{self._subject()}: expected {error_type.__name__}, but nothing was raised; it {did}")
        if not isinstance(self.error, error_type):
            raise AssertionError(
                f"{self._subject()}: expected {error_type.__name__}, but {type(self.error).__name__} was raised: {self.error}"
            ) from self.error
        if match is not None and not re.search(match, str(self.error)):
            raise AssertionError(
                f"{self._subject()}: {type(self.error).__name__} was raised, but its message does not match {match!r}:\n"
                f"  {self.error}"
            ) from self.error
        self._error_expected = True
        return self

    # -- helpers -----------------------------------------------------------------------------------

    def _outcome(self, what: str) -> SagaOutcome:
        __tracebackhide__ = True
        if self.error is not None and not self._error_expected:
            raise AssertionError(
                f"{self._subject()}: {what}, but handling {type(self.message).__name__} raised "
                f"{type(self.error).__name__}: {self.error}"
            ) from self.error
        if self.outcome is None:
            return SagaOutcome(self.saga_type.saga_type, self.key, "ignored", reason="the handler raised")
        return self.outcome

    def _expect_status(self, status: str, what: str) -> SagaOutcome:
        __tracebackhide__ = True
        outcome = self._outcome(what)
        if outcome.status != status:
            raise AssertionError(f"{self._subject()}: {what}, but it {_status_words(outcome)}; {self._did(outcome)}")
        return outcome

    def _subject(self) -> str:
        return f"{self.saga_type.__name__} {self.key}" if self.key else self.saga_type.__name__

    @staticmethod
    def _did(outcome: SagaOutcome) -> str:
        parts = []
        if outcome.commands:
            parts.append("sent " + ", ".join(one_line(c) for c in outcome.commands))
        if outcome.events:
            parts.append("published " + ", ".join(one_line(e) for e in outcome.events))
        if outcome.deadlines:
            parts.append("scheduled " + ", ".join(f"{one_line(d.message)} after {d.after}" for d in outcome.deadlines))
        if outcome.cancelled:
            parts.append("cancelled " + ", ".join(outcome.cancelled))
        return "; ".join(parts) if parts else "sent nothing"


def _status_words(outcome: SagaOutcome) -> str:
    if outcome.status == "ignored":
        return f"ignored the message ({outcome.reason})"
    if outcome.status == "compensated":
        return f"compensated ({outcome.reason})"
    return {"started": "started and is running", "advanced": "is still running", "completed": "completed"}[outcome.status]
