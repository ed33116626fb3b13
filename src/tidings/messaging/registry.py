"""The message registry: (name, version) to class, upcasters, and the JSON codec for both directions.

Reading is tolerant: unknown extra fields are ignored and missing fields that have defaults take
them, so a consumer keeps working when a producer adds an optional field. Old versions are upcast
on read through a chain of dict → dict functions (v1 → v2 → v3) before the typed decode.
"""

from __future__ import annotations

import difflib
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from tidings.domain.errors import ValidationError
from tidings.domain.messages import Message
from tidings.messaging.errors import IncompatibleVersion, MalformedMessage, UnknownMessageType
from tidings.messaging.personal import PersonalDataError, is_sealed

if TYPE_CHECKING:
    from tidings.messaging.personal import KeyRing

__all__ = ["MessageRegistry", "Upcaster", "registry_of"]

M = TypeVar("M", bound=Message)
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

_encoder = msgspec.json.Encoder()


class MessageRegistry:
    """Knows every message class by name, decodes stored bytes to typed messages, and upcasts old ones."""

    def __init__(self, types: Iterable[type[Message]] = ()) -> None:
        self._by_name: dict[str, type[Message]] = {}
        self._decoders: dict[type[Message], msgspec.json.Decoder[Any]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        for message_type in types:
            self.register(message_type)

    def register(self, *message_types: type[Message]) -> None:
        """Make these classes readable by name; registering the same class twice is harmless."""
        for message_type in message_types:
            name = message_type.message_name
            existing = self._by_name.get(name)
            if existing is not None and existing is not message_type:
                raise ValueError(
                    f"two classes claim the message name {name!r}: {existing.__module__}."
                    f"{existing.__qualname__} and {message_type.__module__}.{message_type.__qualname__} — "
                    "give one of them name=... in its class statement"
                )
            self._by_name[name] = message_type

    def upcaster(self, name: str | type[Message], from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator: register ``fn(data) -> data`` that turns ``name`` v``from_version`` into the next version.

        ``name`` is a registered message name or the class itself (which registers it). An unknown
        name (a typo, or a class not registered yet) and a version that is not older than the
        class's current one are refused here, at import time, rather than found out when an old
        message cannot be read. Registering another function for the same step replaces it.
        """
        if isinstance(name, type):
            self.register(name)
            name = name.message_name
        message_type = self._by_name.get(name)
        if message_type is None:
            close = difflib.get_close_matches(name, self._by_name, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"cannot register an upcaster: no message named {name!r} is registered{hint} — "
                "register the class first (registry.register(TheClass)), or pass the class instead of its name "
                "(@registry.upcaster(TheClass, 1))"
            )
        current = message_type.message_version
        if not isinstance(from_version, int) or not 1 <= from_version < current:
            raise ValueError(
                f"cannot register an upcaster of {name!r} from v{from_version}: v{current} is the current version, "
                f"so upcasters go from v1 to v{current - 1} (each to the next); bump version= on the class first"
            )

        def register(fn: Upcaster) -> Upcaster:
            self._upcasters[(name, from_version)] = fn
            return fn

        return register

    def include(self, other: MessageRegistry) -> None:
        """Take over every class and upcaster ``other`` knows (conflicting names are refused as in ``register``)."""
        self.register(*other._by_name.values())
        self._upcasters.update(other._upcasters)

    def upcast_steps(self, name: str) -> list[int]:
        """The versions of ``name`` that have an upcaster to the next one, ascending."""
        return sorted(version for (n, version) in self._upcasters if n == name)

    def upcaster_for(self, name: str, from_version: int) -> Upcaster | None:
        """The function that turns ``name`` v``from_version`` into the next version, or None."""
        return self._upcasters.get((name, from_version))

    def readable_versions(self, name: str) -> list[int]:
        """Every version of ``name`` this registry reads: the current one and each old one with a full upcaster chain."""
        current = self.type_for(name).message_version
        steps = set(self.upcast_steps(name))
        readable = [current]
        for version in range(current - 1, 0, -1):
            if version not in steps:
                break
            readable.append(version)
        return sorted(readable)

    def type_for(self, name: str) -> type[Message]:
        """The class registered under ``name``, or UnknownMessageType listing what is known."""
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownMessageType(name, self._by_name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    @property
    def names(self) -> list[str]:
        """Every registered message name, sorted."""
        return sorted(self._by_name)

    # -- codec ---------------------------------------------------------------------------------

    @staticmethod
    def encode(message: Message) -> bytes:
        """The message's payload as compact JSON bytes (no envelope)."""
        return _encoder.encode(message)

    def decode(self, name: str, version: int, data: bytes | str, keys: KeyRing | None = None) -> Message:
        """Read a payload stored as ``name`` v``version`` into the current class, upcasting on the way.

        Sealed personal fields are opened with ``keys`` (prepared for this payload) first, so
        upcasters and the typed decode see plaintext, or the mask of a forgotten subject.
        """
        message_type = self.type_for(name)
        if is_sealed(data):
            if keys is None:
                raise PersonalDataError(
                    f"{name} holds sealed personal data but was decoded without subject keys; "
                    "pass keys=SubjectKeys(store) after awaiting its prepare_payloads"
                )
            data = keys.open(data, message_type, name)
        current = message_type.message_version
        if version == current:
            try:
                return self._decoder(message_type).decode(data)
            except msgspec.ValidationError as exc:
                raise MalformedMessage(name, str(exc), _field_of(exc)) from None
            except msgspec.DecodeError as exc:
                raise MalformedMessage(name, f"not valid JSON ({exc})") from None
        if version > current:
            raise IncompatibleVersion(
                name, version, current, "it is newer than this code; deploy the consumer's new version first"
            )
        try:
            raw = msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            raise MalformedMessage(name, f"not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise MalformedMessage(name, f"payload must be a JSON object, got {type(raw).__name__}")
        return self.convert(name, self.upcast(name, version, current, raw))

    def upcast(self, name: str, version: int, current: int, data: dict[str, Any]) -> dict[str, Any]:
        """Apply the upcaster chain from ``version`` to ``current``."""
        for step in range(version, current):
            upcaster = self._upcasters.get((name, step))
            if upcaster is None:
                raise IncompatibleVersion(
                    name, version, current, f"no upcaster from v{step} to v{step + 1}; register one"
                )
            try:
                data = upcaster(dict(data))
            except Exception as exc:
                # An old payload the upcaster cannot handle (a field it expects is missing, say) is
                # bad input like any other: report it as such instead of crashing the reader.
                raise MalformedMessage(
                    name, f"upcaster from v{step} to v{step + 1} failed on this payload: {exc!r}"
                ) from exc
        return data

    def convert(self, name: str, data: dict[str, Any]) -> Message:
        """Build the current class registered as ``name`` from plain data, validating every field."""
        message_type = self.type_for(name)
        try:
            return msgspec.convert(data, message_type)
        except msgspec.ValidationError as exc:
            raise MalformedMessage(name, str(exc), _field_of(exc)) from None

    def validate(self, message: M) -> M:
        """The message converted to its declared types (nested dicts to classes, strings to times and UUIDs, ...).

        Python does not enforce annotations, so a message built by hand or from a JSON body may hold
        a dict where a nested class belongs, a string for a ``datetime`` or a list for a ``tuple``.
        What comes back is what any reader of the stored message will decode, so a handler sees the
        same values as the aggregate reloaded later. A command's own ``validate()`` rules then run
        on the converted message. What cannot be converted is a ValidationError naming the field's
        path (``lines[1].qty``) and the expected type.
        """
        converted = self._round_trip(message, writing=False)[1]
        if hasattr(converted, "validate"):
            converted.validate()
        return converted

    def encode_checked(self, message: Message) -> bytes:
        """The message's payload, after checking that it reads back as its declared types.

        The write path calls this for every event it is about to commit: a field of the wrong type
        is a ValidationError naming the message type and the field, instead of a row that every
        reader would refuse.
        """
        return self._round_trip(message, writing=True)[0]

    def _round_trip(self, message: M, *, writing: bool) -> tuple[bytes, M]:
        # One encode and one typed decode, both in C: exactly what a reader of the payload will do.
        message_type = type(message)
        try:
            payload = _encoder.encode(message)
            return payload, self._decoder(message_type).decode(payload)
        except msgspec.ValidationError as exc:
            raise _invalid(message, _reason_of(exc), _field_of(exc), writing=writing) from None
        except TypeError as exc:  # a value the codec cannot encode at all
            raise _invalid(message, str(exc), None, writing=writing) from None

    def _decoder(self, message_type: type[Message]) -> msgspec.json.Decoder[Any]:
        decoder = self._decoders.get(message_type)
        if decoder is None:
            decoder = self._decoders[message_type] = msgspec.json.Decoder(message_type)
        return decoder


def _invalid(message: Message, reason: str, field: str | None, *, writing: bool) -> ValidationError:
    if writing:
        # Named by its class and by its stored name, which is what the journal and consumers show.
        reason += f" ({message.message_name} v{message.message_version} was about to be written; fix the code that builds it)"
    return ValidationError(reason, field=field, message_type=type(message).__name__)


def _field_of(exc: msgspec.ValidationError) -> str | None:
    # msgspec reports the location as "... - at `$.field.sub[0]`"; keep the dotted path only.
    text = str(exc)
    marker = " - at `$"
    path = text.split(marker, 1)[1].rstrip("`").lstrip(".") if marker in text else ""
    # A missing field is reported at its parent ("Object missing required field `x` - at `$.y`").
    missing = "missing required field `"
    if missing in text:
        name = text.split(missing, 1)[1].split("`", 1)[0]
        path = f"{path}.{name}" if path else name
    return path or None


def _reason_of(exc: msgspec.ValidationError) -> str:
    return str(exc).split(" - at `$", 1)[0]


# Keyed weakly by the store: a registry lives as long as the store it belongs to.
_shared: weakref.WeakKeyDictionary[object, MessageRegistry] = weakref.WeakKeyDictionary()


def registry_of(store: object) -> MessageRegistry:
    """The registry shared by the Application and Consumers built on ``store`` without one of their own.

    So an upcaster or class registered on ``app.registry`` is known to every consumer of the same
    store object. Give a component ``registry=`` to keep it apart.
    """
    registry = _shared.get(store)
    if registry is None:
        registry = _shared[store] = MessageRegistry()
    return registry

