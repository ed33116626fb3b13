"""The envelope: the metadata stored and published around every message."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

__all__ = ["Envelope", "MessageContext", "utc_now"]


def utc_now() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """Who, what, when and why of one message; travels as columns in the store and headers on a broker."""

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


class MessageContext(msgspec.Struct, frozen=True, kw_only=True):
    """What a command carries from its caller to every envelope it produces.

    ``correlation_id`` ties one business flow together across contexts; ``causation_id`` names the
    message that directly caused this one. Empty fields are filled in by the application.
    """

    correlation_id: str | None = None
    causation_id: str | None = None
    user_id: str | None = None
    tenant: str | None = None
