"""Encoding of an aggregate's declared state to JSON and back, with types restored on the way in."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import msgspec

from tidings.domain.aggregate import Aggregate
from tidings.domain.errors import ValidationError
from tidings.messaging.errors import MalformedMessage
from tidings.messaging.personal import PersonalDataError, is_sealed
from tidings.messaging.registry import _field_of, _reason_of

if TYPE_CHECKING:
    from tidings.messaging.personal import KeyRing

__all__ = ["StateCodec"]

_encoder = msgspec.json.Encoder()


class StateCodec:
    """Turns an aggregate class's state to bytes and back; missing fields take their declared defaults."""

    def __init__(self, aggregate_class: type[Aggregate]) -> None:
        self._name = aggregate_class.__name__
        self.aggregate_class = aggregate_class
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

    def encode_checked(self, aggregate: Aggregate) -> bytes:
        """JSON bytes of the aggregate's state, after checking they decode back as its declared types.

        A state row or snapshot that does not fit would make the aggregate impossible to load, so
        it is refused before the commit as a ValidationError naming the aggregate and the field.
        """
        hint = (
            f" — {aggregate.aggregate_type} {aggregate.id} would be saved with a state that cannot be loaded again; "
            "check the @applies methods that set it"
        )
        try:
            data = _encoder.encode(aggregate.state())
            self._decoder.decode(data)
        except msgspec.ValidationError as exc:
            raise ValidationError(_reason_of(exc) + hint, field=_field_of(exc), message_type=self._name) from None
        except TypeError as exc:  # a value the codec cannot encode at all
            raise ValidationError(str(exc) + hint, message_type=self._name) from None
        return data

    def decode(self, data: bytes | str, keys: KeyRing | None = None) -> dict[str, Any]:
        """A state dict with each field of its declared type; sealed personal fields opened with ``keys``."""
        if is_sealed(data):
            what = f"the state of {self.aggregate_class.aggregate_type}"
            if keys is None:
                raise PersonalDataError(f"{what} holds sealed personal data but was decoded without subject keys")
            data = keys.open(data, self.aggregate_class, what)
        try:
            return msgspec.structs.asdict(self._decoder.decode(data))
        except msgspec.ValidationError as exc:
            raise MalformedMessage(
                f"{self._name} state", f"stored state does not fit the declared fields: {exc}", _field_of(exc)
            ) from None
        except msgspec.DecodeError as exc:
            raise MalformedMessage(f"{self._name} state", f"stored state is not valid JSON: {exc}") from None
