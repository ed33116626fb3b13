"""What an incoming message's metadata may hold, checked before any of it reaches a column or an index.

A consumer writes a message's event id into its inbox (a primary key), its key into the dead
letters' index, and hands the envelope to handlers that store ids in their own tables. A value
no column can hold — a NUL byte (PostgreSQL text refuses it), an id of 40 KB (over the index
row limit), a version over 32 bits — made every transaction of that message fail, and so the
message was retried forever. Anything a tidings producer never writes is refused here instead,
with the header it came in and what was wrong, and goes to the dead letters at once.

Also here: the payload digest the inbox records, so an event id that comes back with a different
payload is told apart from a true redelivery (docs/decisions/0017-hostile-input-at-consumers.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from hashlib import blake2b
from typing import Any

from tidings.messaging.envelope import Envelope
from tidings.messaging.errors import MessageError

__all__ = [
    "InvalidMetadata",
    "ReusedEventId",
    "check_envelope",
    "check_metadata",
    "payload_digest",
    "usable_event_id",
    "KEY_LIMIT",
    "HEADER_LIMITS",
    "OTHER_HEADER_LIMIT",
]

#: The longest value, in characters, of each envelope header; ids are UUIDs (36) in tidings' own messages.
HEADER_LIMITS: dict[str, int] = {
    "tidings-event_id": 200,
    "tidings-event_type": 200,
    "tidings-schema_version": 200,
    "tidings-occurred_at": 200,
    "tidings-aggregate_type": 200,
    "tidings-aggregate_id": 512,
    "tidings-aggregate_version": 200,
    "tidings-correlation_id": 200,
    "tidings-causation_id": 200,
    "tidings-user_id": 200,
    "tidings-tenant": 200,
    "tidings-source": 200,
}
#: Other ``tidings-*`` headers (a dead letter's error, an application's own) are text, not identifiers.
OTHER_HEADER_LIMIT = 8192
#: A partition key is an aggregate id in tidings' own messages; it is indexed with the dead letters.
KEY_LIMIT = 512
#: The columns the versions go to: schema_version INTEGER, aggregate versions BIGINT in read models.
_INT32 = 2**31 - 1
_INT64 = 2**63 - 1
_PREVIEW = 60


class InvalidMetadata(MessageError):
    """A header (or the key) holds a value no tidings producer writes and no column can be trusted with."""

    def __init__(self, where: str, problem: str, value: object) -> None:
        self.where = where
        self.problem = problem
        super().__init__(
            f"{where} {problem} ({_preview(value)}) — a tidings producer never sends this; "
            "check the producer (or whoever else publishes to this topic)"
        )


class ReusedEventId(MessageError):
    """An event id this consumer applied before came again with a different payload."""

    def __init__(self, event_id: str, stored: int, received: int) -> None:
        self.event_id = event_id
        super().__init__(
            f"event id {event_id!r} was applied before with a different payload (digest {stored & 2**64 - 1:016x}, "
            f"this one {received & 2**64 - 1:016x}); a producer reused an id for another message — the first one's "
            "effects stand; replay this one only if it really is a new message"
        )


#: Every value at most this long and printable (what tidings' own messages have) passes at once.
_FAST_LIMIT = min(HEADER_LIMITS.values())


def check_metadata(headers: Mapping[str, Any], key: Any) -> InvalidMetadata | None:
    """The first thing wrong with ``headers``' tidings values or ``key``, or None when all are fit to store."""
    # Per message on the hot path: a join and one C-level scan accept a message of short, printable
    # text (versions and times are parsed next, and range-checked by check_envelope). Anything else
    # is looked at header by header, to accept it or to say exactly what is wrong.
    values = headers.values()
    try:
        joined = "".join(values)
        if (
            joined.isprintable() and key.isprintable() and len(key) <= KEY_LIMIT
            and (len(joined) <= _FAST_LIMIT or max(map(len, values)) <= _FAST_LIMIT)
        ):  # fmt: skip
            return None
    except (TypeError, AttributeError):
        pass  # a value that is not text: found and named below
    return _check_each(headers, key)


def _check_each(headers: Mapping[str, Any], key: Any) -> InvalidMetadata | None:
    limits = HEADER_LIMITS
    for name, value in headers.items():
        if not name.startswith("tidings-"):
            continue  # the broker's or the application's; kept only as escaped JSON
        if type(value) is not str:
            return InvalidMetadata(f"header {name!r}", f"is a {type(value).__name__}, not text", value)
        limit = limits.get(name)
        if limit is None:
            if len(value) > OTHER_HEADER_LIMIT:
                return InvalidMetadata(f"header {name!r}", _too_long(value, OTHER_HEADER_LIMIT), value)
            if "\x00" in value:
                return InvalidMetadata(f"header {name!r}", "contains a NUL byte", value)
        elif len(value) > limit:
            return InvalidMetadata(f"header {name!r}", _too_long(value, limit), value)
        elif not value.isprintable():
            return InvalidMetadata(f"header {name!r}", _unprintable(value), value)
    if type(key) is not str:
        return InvalidMetadata("the partition key", f"is a {type(key).__name__}, not text", key)
    if len(key) > KEY_LIMIT:
        return InvalidMetadata("the partition key", _too_long(key, KEY_LIMIT), key)
    if not key.isprintable():
        return InvalidMetadata("the partition key", _unprintable(key), key)
    return None


def check_envelope(envelope: Envelope) -> InvalidMetadata | None:
    """What is out of range in a parsed envelope (versions over the columns they are stored in), or None."""
    if not 0 <= envelope.schema_version <= _INT32:
        return InvalidMetadata("header 'tidings-schema_version'", f"is outside 0…{_INT32}", envelope.schema_version)
    version = envelope.aggregate_version
    if version is not None and not -_INT64 <= version <= _INT64:
        return InvalidMetadata("header 'tidings-aggregate_version'", "does not fit in 64 bits", version)
    return None


def payload_digest(payload: bytes) -> int:
    """A 64-bit digest of the payload bytes (signed, as a BIGINT column holds it) for the inbox."""
    return int.from_bytes(blake2b(payload, digest_size=8).digest(), "big", signed=True)


def usable_event_id(header_id: Any, broker_id: str, key: Any, payload: bytes) -> str:
    """An id for the inbox and the dead letters: the envelope's, else the broker's, else a stand-in derived from the message.

    The stand-in is the same for every delivery of the same message, so the inbox still recognises
    a redelivery of a message whose id could not be stored, and two different such messages differ.
    """
    for candidate in (header_id, broker_id):
        if type(candidate) is str and 0 < len(candidate) <= HEADER_LIMITS["tidings-event_id"] and candidate.isprintable():
            return candidate
    digest = blake2b(digest_size=16)
    for part in (header_id, broker_id, key):
        digest.update(repr(part).encode("utf-8", "backslashreplace") + b"\x1f")
    digest.update(payload)
    return f"invalid-id:{digest.hexdigest()}"


def _too_long(value: str, limit: int) -> str:
    return f"is {len(value)} characters long, over the limit of {limit}"


def _unprintable(value: str) -> str:
    index, char = next((i, c) for i, c in enumerate(value) if not c.isprintable())
    what = "a NUL byte" if char == "\x00" else f"the unprintable character {char!r}"
    return f"contains {what} at position {index}"


def _preview(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _PREVIEW else f"{text[:_PREVIEW]}… ({len(text)} characters in all)"
