"""Names that reach SQL or a broker: checked once where they enter, quoted where SQL is composed.

A value (an event id, a consumer name in a WHERE clause) always travels as a bound parameter. A
name that has to be part of the statement's text — a schema, a table, an index — cannot; such a
name is checked against a plain-identifier rule when it enters (``sql_name``) and quoted again
where the statement is built (``quoted``: ``psycopg.sql.Identifier`` on PostgreSQL), so neither a
hostile nor a merely unusual name can change what a statement does (docs/decisions/0016).
"""

from __future__ import annotations

import re

from tidings.domain.errors import TidingsError

__all__ = ["InvalidName", "sql_name", "quoted", "component_name"]

# PostgreSQL keeps 63 bytes of a name (NAMEDATALEN - 1) and silently truncates longer ones, which
# would make two different names the same table.
_MAX_SQL_NAME = 63
_SQL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_LOWER_SQL_NAME = re.compile(r"[a-z_][a-z0-9_]*\Z")
_MAX_COMPONENT_NAME = 200
_COMPONENT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*\Z")


class InvalidName(TidingsError, ValueError):
    """A schema, table, consumer, projection or saga name that tidings refuses to use; the message says what is allowed."""

    def __init__(self, what: str, value: object, allowed: str) -> None:
        self.what = what
        self.value = value
        super().__init__(f"{what} {value!r} is not allowed: {allowed}")


def sql_name(value: object, what: str, *, lowercase: bool = False) -> str:
    """``value`` if it is a plain SQL identifier (letters, digits, ``_``; at most 63 bytes), else InvalidName.

    ``lowercase`` is for names that also appear unquoted in user-written DDL, where PostgreSQL
    would fold capitals away and the quoted and unquoted spellings would name different tables.
    """
    pattern, letters = (_LOWER_SQL_NAME, "lowercase letters") if lowercase else (_SQL_NAME, "letters")
    if not isinstance(value, str) or not pattern.match(value) or len(value.encode()) > _MAX_SQL_NAME:
        raise InvalidName(
            what,
            value,
            f"use 1 to {_MAX_SQL_NAME} {letters}, digits and underscores, not starting with a digit "
            "(for example tenant_42)",
        )
    return value


def quoted(name: str, dialect: str) -> str:
    """``name`` (checked by :func:`sql_name`) quoted as an identifier for ``dialect``'s SQL text."""
    sql_name(name, "SQL name")
    if dialect == "postgresql":
        from psycopg import sql

        return sql.Identifier(name).as_string()
    # SQLite: the name holds no quote (checked above); doubling them is still the rule.
    return '"' + name.replace('"', '""') + '"'


def component_name(value: object, what: str) -> str:
    """``value`` if it can name a consumer, projection or saga everywhere it goes (tables, broker groups, logs).

    Such a name is only ever a bound parameter in SQL; the rule keeps it printable and usable as a
    broker group on every broker, and refuses what no one means on purpose (quotes, spaces, NUL).
    """
    if not isinstance(value, str) or not _COMPONENT_NAME.match(value) or len(value) > _MAX_COMPONENT_NAME:
        raise InvalidName(
            what,
            value,
            f"use 1 to {_MAX_COMPONENT_NAME} letters, digits and the characters _ . : - "
            "(not starting with . : or -), for example billing.usage",
        )
    return value
