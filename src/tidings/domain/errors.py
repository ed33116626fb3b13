"""Errors of the domain: each says what happened, to which object, and what to do about it."""

from __future__ import annotations

__all__ = [
    "TidingsError",
    "DomainError",
    "ValidationError",
    "InvalidArguments",
    "ConcurrencyError",
    "AggregateNotFound",
    "WrongTenant",
]


class TidingsError(Exception):
    """Base of every error tidings raises on purpose."""


class DomainError(TidingsError):
    """A broken invariant; the message is meant to be shown to the user who asked for the change."""


class ValidationError(TidingsError):
    """Bad input: a value that does not fit where it was given; ``field`` names it (a path like ``lines[1].qty``).

    The one error to catch for bad input. A command or message field of the wrong type or value,
    a message built with a missing or unknown argument (:class:`InvalidArguments`, also a
    TypeError), and plain data or bytes that do not fit a message type
    (:class:`~tidings.messaging.errors.MalformedMessage`) are all ValidationErrors.

    Attributes:
        field: where the bad value is, as a dotted path into the message (``buyer_id``,
            ``lines[1].qty``); None when the error is about the message as a whole.
        message_type: the name of the command, message or aggregate class that was refused, when known.
        reason: what is wrong, without the location (the exception text is ``Type.field: reason``).
    """

    def __init__(self, message: str, *, field: str | None = None, message_type: str | None = None) -> None:
        self.field = field
        self.message_type = message_type
        self.reason = message
        super().__init__(self._describe())

    def _describe(self) -> str:
        if self.message_type and self.field:
            return f"{self.message_type}.{self.field}: {self.reason}"
        if self.field or self.message_type:
            return f"{self.field or self.message_type}: {self.reason}"
        return self.reason


class InvalidArguments(ValidationError, TypeError):
    """A message or aggregate was built with a missing, unknown or positional argument; ``field`` names it."""


class ConcurrencyError(TidingsError):
    """Another transaction changed the aggregate since it was loaded; reload and retry."""

    def __init__(self, aggregate_type: str, aggregate_id: str, expected: int, actual: int | None) -> None:
        self.aggregate_type = aggregate_type
        self.aggregate_id = aggregate_id
        self.expected = expected
        self.actual = actual
        if expected == 0:
            # A "new" aggregate collided with an existing stream: retrying the same creation cannot help.
            now = f" (at version {actual})" if actual is not None else ""
            message = f"{aggregate_type} {aggregate_id} already exists{now} — it cannot be created again; load it instead"
        else:
            now = f"is at version {actual}" if actual is not None else "was changed concurrently"
            message = f"{aggregate_type} {aggregate_id} {now}, you saved from version {expected} — reload and retry"
        super().__init__(message)


class AggregateNotFound(TidingsError):
    """No aggregate of that type has that id."""

    def __init__(self, aggregate_type: str, aggregate_id: str) -> None:
        self.aggregate_type = aggregate_type
        self.aggregate_id = aggregate_id
        super().__init__(f"{aggregate_type} {aggregate_id} does not exist — check the id, or create it first")


class WrongTenant(AggregateNotFound):
    """The aggregate belongs to another tenant than the one the command or query runs for.

    An AggregateNotFound, so an API answers it as it answers an unknown id (404) and a caller
    learns nothing of other tenants' aggregates; the message says what to check.
    """

    def __init__(self, aggregate_type: str, aggregate_id: str, tenant: str) -> None:
        self.tenant = tenant
        super().__init__(aggregate_type, aggregate_id)
        self.args = (
            f"{aggregate_type} {aggregate_id} is not an aggregate of tenant {tenant!r} — one tenant can neither "
            "read nor change another's; check the id and the tenant the command runs for",
        )

    def __str__(self) -> str:
        return str(self.args[0])
