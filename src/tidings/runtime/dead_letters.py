"""Dead letters: messages a consumer could not apply, and the later messages of their key parked behind them.

One table, ``tidings_dead_letters``, holds each such message whole (topic, key, headers with the
envelope, payload bytes as received) with why it is there (reason, error, traceback, attempts).
A row moves through these statuses, and is never deleted:

- ``dead``: the consumer gave up on it (retries exhausted, or an error no retry can fix);
- ``held``: a later message of a dead message's key, parked so the key's order is kept;
- ``replay_requested``: an operator asked for another try (``tidings dlq replay``);
- ``replayed``: the running consumer applied it, once (the status change commits with the effects);
- ``purged``: an operator gave up on it (``tidings dlq purge``); kept as the record that it existed.

Operators change statuses here; the consumer of that name does the work (see
:mod:`tidings.runtime.consumer`), so a replay runs the same handlers, in the same transaction
discipline, as a first delivery.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from tidings.domain.errors import TidingsError
from tidings.messaging.registry import MessageRegistry
from tidings.store.base import Store

__all__ = ["DeadLetter", "DeadLetters", "DeadLetterStatus", "ReplayRefused", "BLOCKING_STATUSES", "importance_of"]

DeadLetterStatus = Literal["dead", "held", "replay_requested", "replayed", "purged"]

#: Statuses that keep a key parked: nothing newer of that key is applied while one of these exists.
BLOCKING_STATUSES: tuple[str, ...] = ("dead", "held", "replay_requested")

_COLUMNS = (
    "id, consumer, topic, partition_key, partition, event_id, event_type, schema_version, headers, envelope, "
    "payload, reason, error, traceback, attempts, status, created_at, updated_at, importance"
)
_INSERT = (
    "INSERT INTO tidings_dead_letters (consumer, topic, partition_key, partition, event_id, event_type, "
    "schema_version, headers, envelope, payload, reason, error, traceback, attempts, status, importance) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class ReplayRefused(TidingsError):
    """An operator asked for something the row's status does not allow; the message says what to do instead."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One row of ``tidings_dead_letters``: a message as received, and what became of it."""

    id: int
    consumer: str
    topic: str
    key: str
    partition: int
    event_id: str
    event_type: str | None
    schema_version: int | None
    headers: dict[str, str]
    envelope: dict[str, Any] | None
    payload: bytes
    reason: str
    error: str
    traceback: str
    attempts: int
    status: str
    created_at: datetime
    updated_at: datetime
    #: The importance its contract declares (critical, high, normal, low); None if it is no known contract.
    importance: str | None = None


@dataclass(frozen=True, slots=True)
class NewDeadLetter:
    """What the consumer writes for one message it dead-letters or holds."""

    topic: str
    key: str
    partition: int
    event_id: str
    event_type: str | None
    schema_version: int | None
    headers: dict[str, str]
    envelope: bytes | None
    payload: bytes
    reason: str
    error: str
    traceback: str
    attempts: int
    status: str
    importance: str | None = None


def importance_of(registry: MessageRegistry, event_type: str | None) -> str | None:
    """The importance the contract named ``event_type`` declares; None for anything that is not a known contract."""
    if event_type is None or event_type not in registry:
        return None
    return getattr(registry.type_for(event_type), "contract_importance", None)


class DeadLetters:
    """Reads and changes the dead-letter table of one store (for the consumer, the CLI and tests)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- what the consumer writes (inside its own transaction) -----------------------------------

    async def add(self, consumer: str, rows: Sequence[NewDeadLetter]) -> None:
        """Insert dead or held rows; called inside the consumer's transaction, with the inbox rows."""
        if not rows:
            return
        # The row must be storable whatever the message held: a dead letter that cannot be written
        # leaves its message un-acked for good. Text columns get escaped, bounded text; the headers
        # are kept whole as ASCII JSON (NUL and lone surrogates escaped); the payload stays raw bytes.
        params = [
            (
                consumer, column_text(r.topic, 512), column_text(r.key, 512), _int32(r.partition), column_text(r.event_id, 256),
                None if r.event_type is None else column_text(r.event_type, 256),
                None if r.schema_version is None or _int32(r.schema_version) != r.schema_version else r.schema_version,
                json.dumps(r.headers, default=repr), r.envelope.decode() if r.envelope is not None else None,
                r.payload, column_text(r.reason, 1000), column_text(r.error, 8000), column_text(r.traceback, 64_000),
                r.attempts, r.status, r.importance,
            )
            for r in rows
        ]
        if len(params) == 1:
            await self.store.run(_INSERT, params[0])
        else:
            await self.store.run_many(_INSERT, params)

    async def settle(self, row_id: int, from_status: str, to_status: str) -> bool:
        """Move one row from ``from_status`` to ``to_status``; False if it was not in ``from_status`` (someone else moved it)."""
        changed = await self.store.run(
            f"UPDATE tidings_dead_letters SET status = ?, updated_at = {self._now} WHERE id = ? AND status = ?",
            (to_status, row_id, from_status),
        )
        return changed == 1

    async def fail_again(self, row_id: int, error: str, traceback: str, attempts: int, reason: str) -> None:
        """A replayed or released row failed: it is ``dead`` (again), with the new error and ``reason``."""
        await self.store.run(
            f"UPDATE tidings_dead_letters SET status = 'dead', error = ?, traceback = ?, attempts = attempts + ?, "
            f"reason = ?, updated_at = {self._now} WHERE id = ?",
            (column_text(error, 8000), column_text(traceback, 64_000), attempts, column_text(reason, 1000), row_id),
        )

    async def blocking(self, consumer: str) -> dict[str, set[str]]:
        """Statuses of the rows that hold keys back, per key: ``{key: {"dead", "held", …}}``."""
        placeholders = ", ".join("?" for _ in BLOCKING_STATUSES)
        rows = await self.store.fetch(
            "SELECT DISTINCT partition_key, status FROM tidings_dead_letters "
            f"WHERE consumer = ? AND status IN ({placeholders})",
            (consumer, *BLOCKING_STATUSES),
        )
        found: dict[str, set[str]] = {}
        for key, status in rows:
            found.setdefault(key, set()).add(status)
        return found

    async def of_key(self, consumer: str, key: str) -> list[DeadLetter]:
        """The rows holding ``key`` back, oldest first (a dead head, then what is held behind it)."""
        placeholders = ", ".join("?" for _ in BLOCKING_STATUSES)
        rows = await self.store.fetch(
            f"SELECT {_COLUMNS} FROM tidings_dead_letters WHERE consumer = ? AND partition_key = ? "
            f"AND status IN ({placeholders}) ORDER BY id",
            (consumer, key, *BLOCKING_STATUSES),
        )
        return [_dead_letter(row) for row in rows]

    # -- what operators do ---------------------------------------------------------------------

    async def list(
        self,
        *,
        consumer: str | None = None,
        statuses: Sequence[str] = ("dead", "held", "replay_requested"),
        limit: int = 50,
        importance: str | None = None,
    ) -> list[DeadLetter]:
        """Rows of ``statuses`` (all consumers, or one; of one importance, or any), oldest first."""
        where, params = self._where(consumer, statuses)
        if importance is not None:
            where, params = f"{where or ' WHERE 1 = 1'} AND importance = ?", (*params, importance)
        rows = await self.store.fetch(
            f"SELECT {_COLUMNS} FROM tidings_dead_letters{where} ORDER BY id LIMIT ?", (*params, limit)
        )
        return [_dead_letter(row) for row in rows]

    async def counts(self, consumer: str | None = None) -> dict[tuple[str, str], int]:
        """How many rows each (consumer, status) has."""
        where, params = self._where(consumer, ())
        rows = await self.store.fetch(
            f"SELECT consumer, status, count(*) FROM tidings_dead_letters{where} GROUP BY consumer, status", params
        )
        return {(consumer_name, status): int(n) for consumer_name, status, n in rows}

    async def counts_by_importance(self, statuses: Sequence[str] = BLOCKING_STATUSES) -> dict[str | None, int]:
        """How many rows of ``statuses`` each importance has (None: messages that are no known contract)."""
        where, params = self._where(None, statuses)
        rows = await self.store.fetch(f"SELECT importance, count(*) FROM tidings_dead_letters{where} GROUP BY importance", params)
        return {importance: int(n) for importance, n in rows}

    async def get(self, row_id: int) -> DeadLetter | None:
        """One row by id, whatever its status."""
        rows = await self.store.fetch(f"SELECT {_COLUMNS} FROM tidings_dead_letters WHERE id = ?", (row_id,))
        return _dead_letter(rows[0]) if rows else None

    async def request_replay(self, ids: Sequence[int] = (), *, all_dead: bool = False, consumer: str | None = None) -> int:
        """Mark dead rows ``replay_requested`` (by id, or every dead row); the running consumer applies them.

        Held rows are not replayed by id: they follow their key's dead head once it is replayed or
        purged, in order. Asking for a row in another status raises ReplayRefused saying why.
        """
        if all_dead:
            where, params = self._where(consumer, ("dead",))
            return await self.store.run(
                f"UPDATE tidings_dead_letters SET status = 'replay_requested', updated_at = {self._now}{where}", params
            )
        changed = 0
        for row_id in ids:
            row = await self.get(row_id)
            if row is None:
                raise ReplayRefused(f"there is no dead letter {row_id} — `tidings dlq list` shows the ids")
            if row.status == "held":
                head = await self._head_of(row)
                raise ReplayRefused(
                    f"dead letter {row_id} is held behind dead letter {head} of the same key {row.key!r}; "
                    f"replay (or purge) {head} and the held ones follow in order"
                )
            if row.status != "dead":
                raise ReplayRefused(f"dead letter {row_id} is {row.status}, not dead; only dead rows can be replayed")
            changed += await self.store.run(
                f"UPDATE tidings_dead_letters SET status = 'replay_requested', updated_at = {self._now} "
                "WHERE id = ? AND status = 'dead'",
                (row_id,),
            )
        return changed

    async def purge(self, ids: Sequence[int]) -> int:
        """Give up on dead rows: mark them ``purged`` (kept, never deleted); their key's held rows then flow on."""
        changed = 0
        for row_id in ids:
            row = await self.get(row_id)
            if row is None:
                raise ReplayRefused(f"there is no dead letter {row_id} — `tidings dlq list` shows the ids")
            if row.status not in {"dead", "replay_requested"}:
                what = f"held behind dead letter {await self._head_of(row)}" if row.status == "held" else row.status
                raise ReplayRefused(f"dead letter {row_id} is {what}; only dead rows can be purged")
            changed += await self.store.run(
                f"UPDATE tidings_dead_letters SET status = 'purged', updated_at = {self._now} "
                "WHERE id = ? AND status IN ('dead', 'replay_requested')",
                (row_id,),
            )
        return changed

    # -- helpers -------------------------------------------------------------------------------

    @property
    def _now(self) -> str:
        return "now()" if self.store.dialect == "postgresql" else "strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')"

    @staticmethod
    def _where(consumer: str | None, statuses: Sequence[str]) -> tuple[str, tuple[Any, ...]]:
        clauses, params = [], []
        if consumer is not None:
            clauses.append("consumer = ?")
            params.append(consumer)
        if statuses:
            clauses.append(f"status IN ({', '.join('?' for _ in statuses)})")
            params.extend(statuses)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)

    async def _head_of(self, row: DeadLetter) -> int | str:
        rows = await self.store.fetch(
            "SELECT id FROM tidings_dead_letters WHERE consumer = ? AND partition_key = ? AND id < ? "
            "AND status IN ('dead', 'replay_requested') ORDER BY id DESC LIMIT 1",
            (row.consumer, row.key, row.id),
        )
        return int(rows[0][0]) if rows else "(none left)"


def column_text(value: str, limit: int) -> str:
    """``value`` as any text column takes it: NUL bytes and lone surrogates escaped, cut at ``limit`` characters."""
    if len(value) > limit:
        value = f"{value[:limit]}… [{len(value) - limit} more characters]"
    if "\x00" in value:
        value = value.replace("\x00", "\\x00")
    try:
        value.encode()
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode()
    return value


def _int32(value: int) -> int:
    return value if -(2**31) <= value < 2**31 else -1


def _dead_letter(row: tuple[Any, ...]) -> DeadLetter:
    (
        row_id, consumer, topic, key, partition, event_id, event_type, schema_version, headers, envelope,
        payload, reason, error, traceback, attempts, status, created_at, updated_at, importance,
    ) = row
    return DeadLetter(
        id=int(row_id),
        consumer=consumer,
        topic=topic,
        key=key,
        partition=int(partition),
        event_id=event_id,
        event_type=event_type,
        schema_version=schema_version,
        headers=json.loads(headers),
        envelope=json.loads(envelope) if envelope else None,
        payload=bytes(payload),
        reason=reason,
        error=error,
        traceback=traceback,
        attempts=int(attempts),
        status=status,
        created_at=_time(created_at),
        updated_at=_time(updated_at),
        importance=importance,
    )


def _time(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)
