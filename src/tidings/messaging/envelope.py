"""The envelope: the metadata stored and published around every message."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

__all__ = ["Envelope", "MessageContext", "utc_now"]


def utc_now() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """Who, what, when and why of one message; travels as columns in the store and headers on a broker.

    ``causation_id`` names what directly caused the message: for a domain event a command handler
    recorded, the command's id; for what a domain-bus handler or translator produced, the event
    it handled. A command has no row of its own, so the events it recorded also carry
    ``command_type`` (its message name) and ``command_causation_id`` (the message a consumer or
    saga was handling when it ran the command; None for a command from outside): together they
    keep the chain message → command → events that ``tidings trace`` prints. ``traceparent``
    is captured when the row is written, so the trace follows the message, not the relay.
    """

    event_id: str
    event_type: str
    schema_version: int
    occurred_at: datetime
    aggregate_type: str | None = None
    aggregate_id: str | None = None
    aggregate_version: int | None = None
    correlation_id: str
    causation_id: str | None = None
    user_id: str | None = None
    tenant: str | None = None
    source: str | None = None
    command_type: str | None = None
    command_causation_id: str | None = None
    #: The W3C trace context of the span that created this message (see tidings.telemetry); None untraced.
    traceparent: str | None = None


class MessageContext(msgspec.Struct, frozen=True, kw_only=True):
    """What a command carries from its caller to every envelope it produces.

    ``correlation_id`` ties one business flow together across contexts; ``causation_id`` names the
    message that caused the command (a consumer's ``ctx.context`` sets it to the message being
    handled); the command's own events are caused by the command. Empty fields are filled in by
    the application.
    """

    correlation_id: str | None = None
    causation_id: str | None = None
    user_id: str | None = None
    tenant: str | None = None
