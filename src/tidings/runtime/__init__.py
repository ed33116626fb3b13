"""Processes: the relay, consumers (inbox, retries, dead letters), projections and their projector, sagas and the scheduler."""

from tidings.runtime.relay import Relay, RelayRound

__all__ = ["Relay", "RelayRound"]

from tidings.runtime.sagas import Deadline, Saga, SagaOutcome, SagaRunner, compensates, on, starts  # noqa: E402
from tidings.runtime.scheduler import Scheduler  # noqa: E402

__all__ += ["Deadline", "Saga", "SagaOutcome", "SagaRunner", "Scheduler", "compensates", "on", "starts"]

from tidings.runtime.journal_reader import JournalReader  # noqa: E402
from tidings.runtime.projection import Projection, handles  # noqa: E402
from tidings.runtime.projector import (  # noqa: E402
    ProjectionFailed,
    ProjectionStatus,
    Projector,
    RebuildProgress,
    RebuildResult,
)

__all__ += [
    "JournalReader",
    "Projection",
    "ProjectionFailed",
    "ProjectionStatus",
    "Projector",
    "RebuildProgress",
    "RebuildResult",
    "handles",
]

from tidings.runtime.consumer import ANY, Consumer, ConsumerStats, HandlerContext, Retries, WrongTenant  # noqa: E402
from tidings.runtime.dead_letters import DeadLetter, DeadLetters, ReplayRefused  # noqa: E402

__all__ += ["ANY", "Consumer", "ConsumerStats", "DeadLetter", "DeadLetters", "HandlerContext", "ReplayRefused", "Retries", "WrongTenant"]
