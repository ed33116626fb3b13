"""The pure domain layer: aggregates, commands, domain events and their errors. No I/O, no framework."""

from tidings.domain.aggregate import Aggregate, EventSourcedAggregate, StateStoredAggregate, applies
from tidings.domain.errors import (
    AggregateNotFound,
    ConcurrencyError,
    DomainError,
    InvalidArguments,
    TidingsError,
    ValidationError,
    WrongTenant,
)
from tidings.domain.messages import Command, DomainEvent, Message
from tidings.domain.personal import Personal

__all__ = [
    "Aggregate",
    "AggregateNotFound",
    "Command",
    "ConcurrencyError",
    "DomainError",
    "DomainEvent",
    "EventSourcedAggregate",
    "InvalidArguments",
    "Message",
    "Personal",
    "StateStoredAggregate",
    "TidingsError",
    "ValidationError",
    "WrongTenant",
    "applies",
]
