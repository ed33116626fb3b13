"""Reading a logical replication slot of a PostgreSQL source by SQL, one whole source transaction at a time.

psycopg 3 has no replication-protocol API, so the slot is read with
``pg_logical_slot_peek_binary_changes`` (pgoutput, a publication of the captured tables) and moved
on with ``pg_replication_slot_advance`` only after what was read has been committed downstream
(docs/decisions/0021). ``peek`` never moves the slot: a crash re-reads, it never skips.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tidings.cdc.pgoutput import UNCHANGED, Begin, Commit, Relation, RowMessage, Truncate, decode, format_lsn, parse_lsn
from tidings.domain.errors import TidingsError
from tidings.messaging.redaction import redact_url, scrub

__all__ = ["CdcConfigurationError", "RowChange", "SlotReader", "SlotStatus", "SourceTransaction"]

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class CdcConfigurationError(TidingsError):
    """The source cannot be captured as configured; the message says what to change on the source."""


@dataclass(frozen=True, slots=True)
class RowChange:
    """One row change of a source transaction, as an anti-corruption translator sees it (values are the source's text)."""

    table: str
    operation: str  # "insert" | "update" | "delete"
    old: Mapping[str, object] | None
    new: Mapping[str, object] | None
    key: str
    xid: int
    commit_lsn: int
    commit_time: datetime
    #: Position of this change within its source transaction (several rows share one commit LSN).
    index: int

    @property
    def row(self) -> Mapping[str, object]:
        """The row after the change (before it, for a delete)."""
        return self.new if self.new is not None else (self.old or {})


@dataclass(frozen=True, slots=True)
class SourceTransaction:
    """A committed source transaction: its changes in order, and the LSN that follows its commit (the checkpoint)."""

    xid: int
    commit_lsn: int
    end_lsn: int
    commit_time: datetime
    changes: tuple[RowChange, ...] = field(default_factory=tuple)
    truncated: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SlotStatus:
    """The slot as the server sees it: where it stands, how far behind the WAL, and whether WAL is at risk."""

    slot: str
    exists: bool
    active: bool = False
    wal_status: str | None = None
    confirmed_lsn: str | None = None
    current_lsn: str | None = None
    lag_bytes: int | None = None


def check_name(what: str, name: str) -> str:
    """A slot or publication name, checked (they reach SQL as identifiers)."""
    if not _NAME.match(name):
        raise CdcConfigurationError(
            f"{what} name {name!r} is not allowed: use 1-63 lower-case letters, digits and underscores, starting with a letter"
        )
    return name


class SlotReader:
    """One logical slot and its publication on a source database, read with peek and moved with advance."""

    def __init__(self, dsn: str, slot: str, tables: Sequence[str], publication: str | None = None) -> None:
        if not tables:
            raise CdcConfigurationError("no tables to capture: name at least one (schema.table or table)")
        self.dsn = dsn
        self.slot = check_name("slot", slot)
        self.publication = check_name("publication", publication or f"{slot}_pub")
        self.tables = [t if "." in t else f"public.{t}" for t in tables]
        self._conn: Any = None
        self._primary_keys: dict[str, tuple[str, ...]] = {}

    async def connect(self) -> None:
        """Open the source connection (autocommit: each peek or advance stands alone)."""
        import psycopg

        try:
            self._conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        except psycopg.Error as exc:
            # psycopg quotes a DSN it cannot parse, password and all: print neither.
            raise ConnectionError(
                f"cannot connect to the CDC source {redact_url(self.dsn)}: {scrub(str(exc), self.dsn)}"
            ) from None

    async def close(self) -> None:
        """Close the source connection (a broken one too); the next call opens a new one."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _rows(self, sql: Any, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self._conn is None:
            await self.connect()
        cur = await self._conn.execute(sql, params)
        return await cur.fetchall() if cur.description else []

    async def setup(self, require_full_identity: bool = True) -> None:
        """Check the source, then create the publication and the slot if missing (clear errors, nothing silent).

        Under the default replica identity an update's unchanged TOAST columns and a delete's non-key
        columns are not in the WAL: with ``require_full_identity`` every captured table must have
        ``REPLICA IDENTITY FULL``, so a translator never sees a silent gap.
        """
        from psycopg import sql

        [(level,)] = await self._rows("SHOW wal_level")
        if level != "logical":
            raise CdcConfigurationError(
                f"the source runs with wal_level={level}; logical decoding needs wal_level=logical "
                "(set it in postgresql.conf and restart the server)"
            )
        for table in self.tables:
            schema, _, name = table.partition(".")
            found = await self._rows(
                "SELECT c.relreplident FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
                (schema, name),
            )
            if not found:
                raise CdcConfigurationError(f"table {table} does not exist on the source; create it or fix the name")
            self._primary_keys[table] = await self._primary_key(schema, name)
            identity = found[0][0]
            if require_full_identity and identity != "f":
                raise CdcConfigurationError(
                    f"table {table} has REPLICA IDENTITY {_IDENTITY.get(identity, identity)}: updates would miss unchanged "
                    f"TOAST columns and deletes every non-key column. Run ALTER TABLE {table} REPLICA IDENTITY FULL, "
                    "or start with require_full_identity=False and accept that those values arrive as UNCHANGED"
                )
        targets = sql.SQL(", ").join(sql.Identifier(*t.split(".", 1)) for t in self.tables)
        existing = await self._rows("SELECT 1 FROM pg_publication WHERE pubname = %s", (self.publication,))
        if not existing:
            await self._rows(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(self.publication), targets))
        else:
            await self._rows(sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(sql.Identifier(self.publication), targets))
        slot = await self._rows("SELECT plugin FROM pg_replication_slots WHERE slot_name = %s", (self.slot,))
        if not slot:
            await self._rows("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (self.slot,))
        elif slot[0][0] != "pgoutput":
            raise CdcConfigurationError(f"slot {self.slot} exists with plugin {slot[0][0]}, not pgoutput; drop it or choose another name")

    async def _primary_key(self, schema: str, name: str) -> tuple[str, ...]:
        rows = await self._rows(
            "SELECT a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum "
            "WHERE n.nspname = %s AND c.relname = %s AND i.indisprimary ORDER BY k.ord",
            (schema, name),
        )
        return tuple(r[0] for r in rows)

    async def current_lsn(self) -> int:
        """The source's current WAL write position."""
        [(lsn,)] = await self._rows("SELECT pg_current_wal_lsn()::text")
        return parse_lsn(lsn)

    async def peek(self, max_changes: int = 10_000, upto_lsn: int | None = None) -> list[SourceTransaction]:
        """Whole committed transactions from the slot's position, in commit order, without moving the slot.

        The server returns whole transactions even past ``max_changes``; Relation messages come again
        on every call, so nothing is kept between calls.
        """
        rows = await self._rows(
            "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, %s, "
            "'proto_version', '1', 'publication_names', %s)",
            (self.slot, format_lsn(upto_lsn) if upto_lsn is not None else None, max_changes, self.publication),
        )
        relations: dict[int, Relation] = {}
        found: list[SourceTransaction] = []
        begin: Begin | None = None
        changes: list[RowChange] = []
        truncated: list[str] = []
        for (data,) in rows:
            message = decode(bytes(data))
            if isinstance(message, Relation):
                relations[message.relation_id] = message
            elif isinstance(message, Begin):
                begin, changes, truncated = message, [], []
            elif isinstance(message, RowMessage) and begin is not None:
                relation = relations[message.relation_id]
                if relation.qualified_name not in self._primary_keys:
                    self._primary_keys[relation.qualified_name] = await self._primary_key(relation.namespace, relation.name)
                keys = self._primary_keys[relation.qualified_name] or relation.key_columns or relation.columns
                changes.append(_change(relation, message, begin, len(changes), keys))
            elif isinstance(message, Truncate) and begin is not None:
                truncated.extend(relations[r].qualified_name for r in message.relation_ids if r in relations)
            elif isinstance(message, Commit) and begin is not None:
                found.append(
                    SourceTransaction(begin.xid, message.commit_lsn, message.end_lsn, message.commit_time, tuple(changes), tuple(truncated))
                )
                begin = None
        return found

    async def advance(self, lsn: int, *, checked: bool = True) -> None:
        """Move the slot to ``lsn`` (never backwards: a position at or behind the slot's is left as it is).

        ``checked=False`` skips reading the slot's position first, for a caller that knows ``lsn`` is
        ahead of it (the end of a transaction just read from it).
        """
        if checked:
            confirmed = await self._rows("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (self.slot,))
            if confirmed and confirmed[0][0] and parse_lsn(confirmed[0][0]) >= lsn:
                return
        await self._rows("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (self.slot, format_lsn(lsn)))

    async def status(self) -> SlotStatus:
        """The slot's position, lag behind the WAL in bytes, and ``wal_status`` (``lost`` means WAL was removed)."""
        rows = await self._rows(
            "SELECT active, wal_status, confirmed_flush_lsn::text, pg_current_wal_lsn()::text, "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = %s",
            (self.slot,),
        )
        if not rows:
            return SlotStatus(self.slot, exists=False)
        active, wal_status, confirmed, current, lag = rows[0]
        return SlotStatus(self.slot, True, bool(active), wal_status, confirmed, current, int(lag) if lag is not None else None)

    async def drop(self) -> list[str]:
        """Drop the slot and the publication (what ``tidings cdc drop`` does); the names of what was dropped."""
        from psycopg import sql

        dropped = []
        if await self._rows("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (self.slot,)):
            await self._rows("SELECT pg_drop_replication_slot(%s)", (self.slot,))
            dropped.append(f"slot {self.slot}")
        if await self._rows("SELECT 1 FROM pg_publication WHERE pubname = %s", (self.publication,)):
            await self._rows(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(self.publication)))
            dropped.append(f"publication {self.publication}")
        return dropped


_IDENTITY = {"d": "DEFAULT", "n": "NOTHING", "i": "USING INDEX", "f": "FULL"}


def _change(relation: Relation, message: RowMessage, begin: Begin, index: int, key_columns: tuple[str, ...]) -> RowChange:
    new = dict(zip(relation.columns, message.new, strict=False)) if message.new is not None else None
    old = None
    if message.old is not None:
        if message.old_is_key_only:
            # A key-only old tuple carries the key columns in their places and nulls elsewhere.
            old = {c: v for c, v in zip(relation.columns, message.old, strict=False) if c in relation.key_columns}
        else:
            old = dict(zip(relation.columns, message.old, strict=False))
    if new is not None and old is not None:
        # Unchanged TOAST values are not sent again; under REPLICA IDENTITY FULL the old row has them.
        new = {c: (old.get(c, v) if v is UNCHANGED else v) for c, v in new.items()}
    row = new if new is not None else (old or {})
    key = "/".join(str(row.get(c)) for c in key_columns)
    return RowChange(relation.qualified_name, message.operation, old, new, key, begin.xid, begin.final_lsn, begin.commit_time, index)
