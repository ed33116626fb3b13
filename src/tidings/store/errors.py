"""What a database error means for the worker that got it: wait, blame the message, or stop.

Every worker (relay, consumer, projector, scheduler) asks here, so the answer is decided once
for both stores (see docs/decisions/0015). Four kinds:

- ``transient``: the database cannot be reached or is busy (connection lost or refused, server
  shutting down, out of connections, SQLite's write lock held by another process). Nothing is
  wrong with the work: wait and do the same work again.
- ``conflict``: the transaction lost a race (deadlock, serialization failure). Also transient,
  but it concerns one unit of work, which a caller may retry on its own.
- ``data``: the statement failed because of the values it carried (a constraint, a type, a
  value out of range). Blame the message or row that brought them.
- ``permanent``: the database refuses the work for a reason that neither waiting nor another
  message fixes: a missing table or column (schema not migrated, or dropped), no privilege, a
  wrong database or password, a closed store, a corrupt file. The worker stops and says what to do.
"""

from __future__ import annotations

import sqlite3
from typing import Literal

from tidings.domain.errors import TidingsError

__all__ = ["Kind", "PermanentDatabaseError", "classify", "is_conflict", "is_permanent", "is_transient", "is_unavailable"]

Kind = Literal["transient", "conflict", "data", "permanent"]

# SQLite result codes (their primary names; extended ones add a suffix, e.g. SQLITE_BUSY_SNAPSHOT).
_SQLITE_TRANSIENT = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_FULL", "SQLITE_PROTOCOL", "SQLITE_SCHEMA")
_SQLITE_DATA = ("SQLITE_CONSTRAINT", "SQLITE_MISMATCH", "SQLITE_TOOBIG", "SQLITE_RANGE")
# Without a result code (an error raised by the sqlite3 module itself), the text tells.
_SQLITE_TRANSIENT_TEXT = ("locked", "busy", "disk I/O", "unable to open")

# PostgreSQL SQLSTATE classes (two characters) and codes.
_PG_CONFLICT = frozenset({"40001", "40P01"})
_PG_TRANSIENT_CLASSES = frozenset({"08", "40", "53", "58"})
# Shutting down, crashed, starting up, idle session ended, statement cancelled or timed out, lock
# timeout, and a read-only transaction (a standby, as during a failover: the primary comes back).
_PG_TRANSIENT_CODES = frozenset({"57P01", "57P02", "57P03", "57P05", "57014", "55P03", "25006"})
_PG_DATA_CLASSES = frozenset({"21", "22", "23", "25", "27", "44", "P0"})


def classify(exc: BaseException) -> Kind | None:
    """The kind of database error ``exc`` is; None when it does not come from the database or its connection."""
    if isinstance(exc, OSError):  # ConnectionError and TimeoutError included: the network, not the work
        return "transient"
    if isinstance(exc, sqlite3.Error):
        return _classify_sqlite(exc)
    module = type(exc).__module__
    if module.startswith("psycopg_pool"):
        # PoolTimeout / TooManyRequests: no connection free or reachable in time. PoolClosed: the
        # store was closed under the worker, which no wait will undo.
        return "permanent" if type(exc).__name__ == "PoolClosed" else "transient"
    if module.startswith("psycopg"):
        return _classify_postgres(exc)
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether waiting and doing the same work again can succeed (database unreachable or busy, or a lost race)."""
    return classify(exc) in ("transient", "conflict")


def is_unavailable(exc: BaseException) -> bool:
    """Whether the database cannot be reached or is busy: no message or row is to blame, the worker waits."""
    return classify(exc) == "transient"


def is_conflict(exc: BaseException) -> bool:
    """Whether the transaction lost a race with another one (deadlock, serialization failure): retry that transaction."""
    return classify(exc) == "conflict"


def is_permanent(exc: BaseException) -> bool:
    """Whether the database refuses the work for good (schema, privileges, configuration): stop the worker."""
    return classify(exc) == "permanent"


class PermanentDatabaseError(TidingsError):
    """A worker stopped because the database refused its work for a reason waiting will not fix.

    ``worker`` names the worker (``relay host-123-ab12``), ``cause`` is the database's error.
    """

    def __init__(self, worker: str, cause: BaseException) -> None:
        self.worker = worker
        self.cause = cause
        first_line = (str(cause).strip().splitlines() or [""])[0]
        super().__init__(
            f"{worker} stopped: the database refused its work ({type(cause).__name__}: {first_line}) — "
            f"{_advice(cause)}, then start it again"
        )


def _classify_sqlite(exc: sqlite3.Error) -> Kind:
    name = getattr(exc, "sqlite_errorname", None) or ""
    if name.startswith(_SQLITE_TRANSIENT):
        return "transient"
    if name.startswith(_SQLITE_DATA) or isinstance(exc, (sqlite3.IntegrityError, sqlite3.DataError)):
        return "data"
    if not name:
        text = str(exc)
        if isinstance(exc, sqlite3.OperationalError) and any(part in text for part in _SQLITE_TRANSIENT_TEXT):
            return "transient"
        if isinstance(exc, (sqlite3.ProgrammingError, sqlite3.InterfaceError)) and "closed" not in text:
            return "data"  # a value the module cannot bind, or a statement that does not fit its parameters
    return "permanent"


def _classify_postgres(exc: BaseException) -> Kind:
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        if sqlstate in _PG_CONFLICT:
            return "conflict"
        if sqlstate[:2] in _PG_TRANSIENT_CLASSES or sqlstate in _PG_TRANSIENT_CODES:
            return "transient"
        if sqlstate[:2] in _PG_DATA_CLASSES:
            return "data"
        return "permanent"
    # Raised by psycopg itself, with no server answer: a lost or refused connection is an
    # OperationalError; a value psycopg cannot send is a DataError; the rest is misuse.
    names = {klass.__name__ for klass in type(exc).__mro__}
    if "OperationalError" in names:
        return "transient"
    if names & {"DataError", "IntegrityError"}:
        return "data"
    return "permanent"


def _advice(exc: BaseException) -> str:
    """What an operator should do about a permanent database error."""
    text = str(exc)
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if sqlstate in {"42P01", "42703", "42883", "3F000"} or "no such table" in text or "no such column" in text or "has no column" in text:
        return "a table or column tidings needs is missing: run `tidings db migrate` against this database (check the URL and schema)"
    if sqlstate.startswith("28") or sqlstate == "3D000":
        return "check the user, password and database name in the database URL"
    if sqlstate == "42501":
        return "grant the database user access to tidings' tables"
    if "readonly" in text or "read-only" in text:
        return "the database is read-only: check the file's permissions or the server's settings"
    if "closed" in text.lower():
        return "the store was closed while the worker used it: close the store only after its workers stopped"
    return "fix the cause named here (a schema changed by hand, or a bug to report)"
