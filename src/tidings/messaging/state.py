"""Encoding of an aggregate's declared state to JSON and back, with types restored on the way in."""

from __future__ import annotations

import copy
from typing import Any

import msgspec

from tidings.domain.aggregate import Aggregate
from tidings.messaging.errors import MalformedMessage

__all__ = ["StateCodec"]

_encoder = msgspec.json.Encoder()


class StateCodec:
    """Turns an aggregate class's state to bytes and back; missing fields take their declared defaults."""

    def __init__(self, aggregate_class: type[Aggregate]) -> None:
        fields = []
        for name, hint in aggregate_class.state_fields().items():
            default = getattr(aggregate_class, name, None)
            if isinstance(default, (list, dict, set)):
                fields.append((name, hint, msgspec.field(default_factory=lambda d=default: copy.deepcopy(d))))
            else:
                fields.append((name, hint, default))
        self._struct = msgspec.defstruct(f"{aggregate_class.__name__}State", fields, kw_only=True)
        self._decoder = msgspec.json.Decoder(self._struct)

    @staticmethod
    def encode(state: dict[str, Any]) -> bytes:
        """JSON bytes of a state dict."""
        return _encoder.encode(state)

    def decode(self, data: bytes | str) -> dict[str, Any]:
        """A state dict with each field of its declared type."""
        try:
            return msgspec.structs.asdict(self._decoder.decode(data))
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError too
            raise MalformedMessage(self._struct.__name__, f"stored state does not fit the declared fields: {exc}") from None
