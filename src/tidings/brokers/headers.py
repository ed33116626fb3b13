"""Envelope ↔ message headers: the same metadata on every broker, identical on the way out and in."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from tidings.messaging.envelope import Envelope

__all__ = ["envelope_to_headers", "headers_to_envelope", "HEADER_PREFIX"]

#: Every tidings header starts with this, so they never collide with a broker's or a user's own.
HEADER_PREFIX = "tidings-"

_FIELDS = Envelope.__struct_fields__
# The trace context travels under its W3C name, so any OpenTelemetry-instrumented reader finds it.
_HEADER_OF = {name: f"{HEADER_PREFIX}{name}" for name in _FIELDS} | {"traceparent": "traceparent"}
_decoder = msgspec.json.Decoder(Envelope)


def envelope_to_headers(envelope_json: bytes) -> dict[str, str]:
    """Headers for a stored envelope (JSON bytes): one string header per field that has a value."""
    raw = msgspec.json.decode(envelope_json)
    return {_HEADER_OF.get(name) or f"{HEADER_PREFIX}{name}": str(value) for name, value in raw.items() if value is not None}


def headers_to_envelope(headers: Mapping[str, str]) -> Envelope:
    """The envelope carried by ``headers``; MalformedMessage-like ValueError naming what is missing."""
    raw: dict[str, object] = {}
    for name in _FIELDS:
        value = headers.get(_HEADER_OF[name])
        if value is not None:
            raw[name] = int(value) if name in {"schema_version", "aggregate_version"} else value
    try:
        return msgspec.convert(raw, Envelope)
    except msgspec.ValidationError as exc:
        raise ValueError(f"message headers do not form an envelope: {exc}") from None
