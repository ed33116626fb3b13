"""A decoder for PostgreSQL's ``pgoutput`` logical replication messages (protocol version 1), as read by SQL.

``pg_logical_slot_peek_binary_changes`` returns one ``bytea`` per message: Begin, Relation,
Insert/Update/Delete/Truncate, Commit (and Origin/Type, which we skip). Column values arrive in
their text form; a value the server did not send (an unchanged TOAST column under the default
replica identity) is :data:`UNCHANGED` rather than a guess. Only what tidings needs is decoded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = [
    "UNCHANGED",
    "Begin",
    "Commit",
    "DecodeError",
    "Relation",
    "RowMessage",
    "Truncate",
    "decode",
    "format_lsn",
    "parse_lsn",
]

#: PostgreSQL's epoch: timestamps in the protocol are microseconds since 2000-01-01 UTC.
_PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)


class _Unchanged:
    """The marker for a column the server did not send (an unchanged TOAST value)."""

    def __repr__(self) -> str:
        return "UNCHANGED"


#: A column value that is not in the message: unchanged and stored out of line (TOAST).
UNCHANGED: Final = _Unchanged()


class DecodeError(ValueError):
    """A message that is not well-formed pgoutput: names the message kind and the offset."""


@dataclass(frozen=True, slots=True)
class Begin:
    """A source transaction starts; ``final_lsn`` is its commit record's LSN."""

    final_lsn: int
    commit_time: datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    """A source transaction ends; ``end_lsn`` is where the next one starts (the checkpoint to keep)."""

    commit_lsn: int
    end_lsn: int
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class Relation:
    """A table's shape as the change messages that follow refer to it by ``relation_id``."""

    relation_id: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[str, ...]
    key_columns: tuple[str, ...]

    @property
    def qualified_name(self) -> str:
        return f"{self.namespace}.{self.name}"


@dataclass(frozen=True, slots=True)
class RowMessage:
    """An insert, update or delete: ``old`` (key or whole row, when the server sent it) and ``new`` as text values."""

    operation: str  # "insert" | "update" | "delete"
    relation_id: int
    old: tuple[object, ...] | None = None
    new: tuple[object, ...] | None = None
    old_is_key_only: bool = False


@dataclass(frozen=True, slots=True)
class Truncate:
    """TRUNCATE of one or more tables."""

    relation_ids: tuple[int, ...] = field(default_factory=tuple)


Message = Begin | Commit | Relation | RowMessage | Truncate | None


def parse_lsn(text: str) -> int:
    """``'16/B374D848'`` as an integer (the form comparisons need)."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def format_lsn(value: int) -> str:
    """An integer LSN in PostgreSQL's ``X/Y`` text form."""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> tuple[int, ...]:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise DecodeError(f"pgoutput message cut short at byte {self.pos} (wanted {size} more)")
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values

    def byte(self) -> str:
        return chr(self.take("!B")[0])

    def string(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise DecodeError(f"pgoutput string without its terminator at byte {self.pos}")
        text = self.data[self.pos : end].decode()
        self.pos = end + 1
        return text

    def time(self) -> datetime:
        return _PG_EPOCH + timedelta(microseconds=self.take("!q")[0])

    def tuple_data(self) -> tuple[object, ...]:
        (count,) = self.take("!H")
        values: list[object] = []
        for _ in range(count):
            kind = self.byte()
            if kind == "n":
                values.append(None)
            elif kind == "u":
                values.append(UNCHANGED)
            elif kind in ("t", "b"):
                (length,) = self.take("!i")
                if self.pos + length > len(self.data):
                    raise DecodeError(f"pgoutput column value cut short at byte {self.pos}")
                raw = self.data[self.pos : self.pos + length]
                self.pos += length
                values.append(raw.decode() if kind == "t" else raw)
            else:
                raise DecodeError(f"unknown pgoutput column kind {kind!r} at byte {self.pos - 1}")
        return tuple(values)


def decode(data: bytes) -> Message:
    """One pgoutput message; None for kinds tidings does not use (Origin, Type, logical messages)."""
    reader = _Reader(bytes(data))
    kind = reader.byte()
    if kind == "B":
        final_lsn, micros, xid = reader.take("!QqI")
        return Begin(final_lsn, _PG_EPOCH + timedelta(microseconds=micros), xid)
    if kind == "C":
        _flags, commit_lsn, end_lsn, micros = reader.take("!BQQq")
        return Commit(commit_lsn, end_lsn, _PG_EPOCH + timedelta(microseconds=micros))
    if kind == "R":
        (relation_id,) = reader.take("!I")
        namespace, name = reader.string(), reader.string()
        identity = reader.byte()
        (count,) = reader.take("!H")
        columns, keys = [], []
        for _ in range(count):
            (flags,) = reader.take("!B")
            column = reader.string()
            reader.take("!Ii")  # type oid, type modifier: values arrive as text, so unused
            columns.append(column)
            if flags & 1:
                keys.append(column)
        return Relation(relation_id, namespace or "pg_catalog", name, identity, tuple(columns), tuple(keys))
    if kind == "I":
        (relation_id,) = reader.take("!I")
        if reader.byte() != "N":
            raise DecodeError("pgoutput Insert without its new tuple")
        return RowMessage("insert", relation_id, new=reader.tuple_data())
    if kind == "U":
        (relation_id,) = reader.take("!I")
        marker = reader.byte()
        old = None
        if marker in ("K", "O"):
            old = reader.tuple_data()
            key_only = marker == "K"
            marker = reader.byte()
        else:
            key_only = False
        if marker != "N":
            raise DecodeError("pgoutput Update without its new tuple")
        return RowMessage("update", relation_id, old=old, new=reader.tuple_data(), old_is_key_only=key_only)
    if kind == "D":
        (relation_id,) = reader.take("!I")
        marker = reader.byte()
        if marker not in ("K", "O"):
            raise DecodeError("pgoutput Delete without its old tuple")
        return RowMessage("delete", relation_id, old=reader.tuple_data(), old_is_key_only=marker == "K")
    if kind == "T":
        (count,) = reader.take("!I")
        reader.take("!B")
        return Truncate(tuple(reader.take(f"!{count}I")) if count else ())
    if kind in ("O", "Y", "M"):
        return None
    raise DecodeError(f"unknown pgoutput message kind {kind!r}")
