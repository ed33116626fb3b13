"""Plain records passed between the application layer and a store: what to write, what was read."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["JournalEntry", "StoredEvent", "StateRow", "SnapshotRow", "OutboxEntry", "OutboxRow", "Changes", "StreamWrite"]


@dataclass(slots=True, frozen=True)
class JournalEntry:
    """One domain event to append to the journal at ``stream_version`` of ``stream_id``."""

    stream_id: str
    stream_version: int
    event_id: str
    event_type: str
    schema_version: int
    occurred_at: datetime
    correlation_id: str
    envelope: bytes
    payload: bytes


@dataclass(slots=True, frozen=True)
class StoredEvent:
    """A journal entry as read back, with its global position."""

    position: int
    stream_id: str
    stream_version: int
    event_id: str
    event_type: str
    schema_version: int
    occurred_at: datetime
    correlation_id: str
    envelope: bytes
    payload: bytes
    #: The tenant of the envelope (None on a single-tenant platform).
    tenant: str | None = None


@dataclass(slots=True, frozen=True)
class StateRow:
    """The saved state of a state-stored aggregate."""

    aggregate_type: str
    aggregate_id: str
    version: int
    state: bytes
    #: The tenant that owns the aggregate: written when the row is created, never changed by an update.
    tenant: str | None = None


@dataclass(slots=True, frozen=True)
class SnapshotRow:
    """The state of an event-sourced aggregate at ``version``, so loading replays only what came after."""

    stream_id: str
    version: int
    state: bytes
    #: The tenant that owns the aggregate: written with the first snapshot, kept by later ones.
    tenant: str | None = None


@dataclass(slots=True, frozen=True)
class OutboxEntry:
    """An integration event to publish, written in the same transaction as the change that caused it."""

    event_id: str
    partition: int
    partition_key: str
    topic: str
    event_type: str
    envelope: bytes
    payload: bytes


@dataclass(slots=True, frozen=True)
class OutboxRow:
    """An outbox entry as read back, with its delivery bookkeeping."""

    id: int
    event_id: str
    partition: int
    partition_key: str
    topic: str
    event_type: str
    envelope: bytes
    payload: bytes
    attempts: int
    #: None in rows claimed by the relay, which reads only what it publishes.
    created_at: datetime | None = None
    delivered_at: datetime | None = None
    parked_at: datetime | None = None
    last_error: str | None = None
    #: How often an operator replayed the row after delivery: brokers de-duplicate by (event id, replays).
    replays: int = 0


@dataclass(slots=True, frozen=True)
class StreamWrite:
    """One aggregate touched by a commit: which version it was loaded at (for the concurrency error)."""

    aggregate_type: str
    aggregate_id: str
    stream_id: str
    expected_version: int


@dataclass(slots=True)
class Changes:
    """Everything one unit of work writes; a store commits all of it in one transaction or none of it.

    Concurrency is guarded by the journal's unique (stream_id, stream_version): every saved
    aggregate appends its new events at versions expected+1…, so a racing save of the same
    aggregate collides on the first of them, whatever the persistence style.
    """

    streams: list[StreamWrite] = field(default_factory=list)
    journal: list[JournalEntry] = field(default_factory=list)
    states: list[StateRow] = field(default_factory=list)
    snapshots: list[SnapshotRow] = field(default_factory=list)
    outbox: list[OutboxEntry] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.journal or self.states or self.snapshots or self.outbox)
