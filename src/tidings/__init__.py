"""tidings: event-driven Domain-Driven Design — aggregates, one transaction with an outbox, reliable delivery.

What a user imports is listed here; everything else is an implementation detail.
"""

from tidings.app import Application, CommandResult, UnitOfWork, UnknownCommand
from tidings.domain import (
    Aggregate,
    AggregateNotFound,
    Command,
    ConcurrencyError,
    DomainError,
    DomainEvent,
    EventSourcedAggregate,
    InvalidArguments,
    Personal,
    StateStoredAggregate,
    TidingsError,
    ValidationError,
    WrongTenant,
    applies,
)
from tidings.messaging import (
    Envelope,
    IncompatibleVersion,
    IntegrationEvent,
    MalformedMessage,
    MessageContext,
    MessageError,
    MessageRegistry,
    MessageTooLarge,
    UnknownMessageType,
)
from tidings.store import Store, open_store

__all__ = [
    "Aggregate",
    "AggregateNotFound",
    "Application",
    "Command",
    "CommandResult",
    "ConcurrencyError",
    "DomainError",
    "DomainEvent",
    "Envelope",
    "EventSourcedAggregate",
    "IncompatibleVersion",
    "IntegrationEvent",
    "InvalidArguments",
    "MalformedMessage",
    "MessageContext",
    "MessageError",
    "MessageRegistry",
    "MessageTooLarge",
    "Personal",
    "StateStoredAggregate",
    "Store",
    "TidingsError",
    "UnitOfWork",
    "UnknownCommand",
    "UnknownMessageType",
    "ValidationError",
    "WrongTenant",
    "applies",
    "open_store",
]

__version__ = "0.1.0"
