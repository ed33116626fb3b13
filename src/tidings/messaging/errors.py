"""Errors about messages that cannot be read: none of them gets better by retrying."""

from __future__ import annotations

from collections.abc import Iterable

from tidings.domain.errors import TidingsError, ValidationError

__all__ = [
    "MessageError",
    "UnknownMessageType",
    "IncompatibleVersion",
    "MalformedMessage",
    "MessageTooLarge",
]


class MessageError(TidingsError):
    """A message that cannot be accepted as it is; retrying will not help (dead-letter it with this reason)."""


class UnknownMessageType(MessageError):
    """No registered class has this message name (or this name and version)."""

    def __init__(self, name: str, known: Iterable[str], version: int | None = None) -> None:
        self.name = name
        self.version = version
        known_list = sorted(set(known))
        shown = ", ".join(known_list[:20]) + (" …" if len(known_list) > 20 else "")
        what = f"{name!r}" if version is None else f"{name!r} v{version}"
        super().__init__(
            f"unknown message type {what}; known types: {shown or '(none registered)'} — "
            "register the class with the application (or check the producer's event_type)"
        )


class IncompatibleVersion(MessageError):
    """A stored or incoming message has a version this code cannot turn into the current one."""

    def __init__(self, name: str, version: int, current: int, reason: str) -> None:
        self.name = name
        self.version = version
        self.current = current
        super().__init__(f"{name} v{version} cannot be read as v{current}: {reason}")


class MalformedMessage(MessageError, ValidationError):
    """The bytes are not valid JSON, or a field has the wrong type; ``field`` names it when known.

    A ValidationError too, so one ``except ValidationError`` catches bad input from every source.
    """

    def __init__(self, name: str, reason: str, field: str | None = None) -> None:
        self.name = name
        super().__init__(reason, field=field, message_type=name)

    def _describe(self) -> str:
        at = f" at field {self.field!r}" if self.field else ""
        return f"malformed {self.name}{at}: {self.reason}"


class MessageTooLarge(MessageError):
    """An encoded message is over the configured size limit; it was refused before anything was written."""

    def __init__(self, name: str, size: int, limit: int) -> None:
        self.name = name
        self.size = size
        self.limit = limit
        super().__init__(
            f"{name} encodes to {size} bytes, over the limit of {limit} bytes — store large content "
            "elsewhere and send a reference, or raise max_message_bytes"
        )
