"""Hostile names: a schema, consumer, projection or saga name can never become SQL.

Every name that must be part of a statement's text is refused at the door unless it is a plain
identifier, and quoted where the statement is built; every other name travels as a parameter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from psycopg.sql import SQL, Identifier

from support import POSTGRES_URL, require_service
from tidings.messaging import IntegrationEvent
from tidings.runtime import Consumer, Projection, Saga, handles
from tidings.store import InvalidName, open_store

ROOT = Path(__file__).resolve().parent.parent

# What an attacker would put where a schema name is expected.
HOSTILE_NAMES = [
    'x";DROP/**/TABLE/**/public.{victim};--',
    "x'; DROP TABLE public.{victim}; --",
    "x -c search_path=public",
    "tenant\x00",
    "",
    "a" * 64,
    "1st",
]


@pytest.fixture
async def victim() -> AsyncIterator[str]:
    """A table in the public schema that no attack may drop (its own name: the database is shared)."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    name = f"victim_{uuid.uuid4().hex[:10]}"
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        await conn.execute(SQL("CREATE TABLE public.{} (id int)").format(Identifier(name)))
    yield name
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        await conn.execute(SQL("DROP TABLE IF EXISTS public.{}").format(Identifier(name)))


async def _exists(table: str) -> bool:
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        row = await (await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{table}",))).fetchone()
        return bool(row and row[0])


@pytest.mark.parametrize("template", HOSTILE_NAMES)
async def test_a_schema_name_that_is_not_a_plain_identifier_is_refused_and_runs_nothing(victim: str, template: str) -> None:
    # Given a table in public, and a schema name crafted to drop it
    schema = template.format(victim=victim)
    # When a store is opened on that schema
    refused: Exception | None = None
    try:
        store = await open_store(POSTGRES_URL, schema=schema)
    except Exception as exc:
        refused = exc
    else:
        await store.close()
    # Then the victim is still there, and the name was refused saying what is allowed
    assert await _exists(victim), f"opening a store on schema {schema!r} dropped public.{victim}"
    assert isinstance(refused, InvalidName), f"schema {schema!r} was not refused: {refused!r}"
    assert "PostgreSQL schema name" in str(refused)
    assert "letters, digits and underscores" in str(refused)


async def test_a_capitalised_schema_is_created_and_searched_under_the_same_name() -> None:
    # Given a schema name with capitals (PostgreSQL folds unquoted names to lowercase)
    require_service("PostgreSQL", "127.0.0.1", 5432)
    schema = f"Tenant_{uuid.uuid4().hex[:8]}"
    # When a store is opened and migrated on it
    store = await open_store(POSTGRES_URL, schema=schema, migrate=True)
    try:
        # Then its tables are in exactly that schema, and nothing leaked into its lowercase twin
        rows = await store.execute(  # type: ignore[attr-defined]
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'tidings_outbox' "
            "AND table_schema IN (%s, %s)",
            (schema, schema.lower()),
        )
        assert rows == [(schema,)]
        assert await store.count("outbox") == 0
    finally:
        await store.drop_schema()  # type: ignore[attr-defined]
        await store.close()


def test_run_roles_refuses_a_hostile_schema_and_the_victim_survives(victim: str, tmp_path: Path) -> None:
    # Given the reference platform started with a schema name that carries SQL
    schema = f'x";DROP/**/TABLE/**/public.{victim};--'
    result = subprocess.run(
        [sys.executable, "-m", "examples.licensing", "run-roles", "--roles", "relay",
         "--database", POSTGRES_URL, "--broker", "local:", "--schema", schema],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    # Then it stops at once with a clear error (exit 2), and the victim is still there
    assert result.returncode == 2, result.stdout + result.stderr
    assert "PostgreSQL schema name (--schema)" in result.stderr
    assert "letters, digits and underscores" in result.stderr
    import asyncio

    assert asyncio.run(_exists(victim))


class Pinged(IntegrationEvent, name="test.HostilePinged", version=1):
    """A message for the hostile projection and saga names below."""

    key: str


HOSTILE_COMPONENT_NAMES = ["x'; DROP TABLE tidings_inbox; --", 'a"b', "two words", "nul\x00", "", ".hidden", "a" * 201]


@pytest.mark.parametrize("name", HOSTILE_COMPONENT_NAMES)
def test_a_consumer_with_a_hostile_name_is_refused_with_what_is_allowed(name: str) -> None:
    with pytest.raises(InvalidName, match=r"consumer name .* is not allowed: use 1 to 200 letters, digits"):
        Consumer(name)


@pytest.mark.parametrize("name", HOSTILE_COMPONENT_NAMES)
def test_a_projection_with_a_hostile_name_is_refused_with_what_is_allowed(name: str) -> None:
    with pytest.raises(InvalidName, match=r"projection name .* is not allowed"):

        class _Board(Projection, name=name):
            tables = {"hostile_board": "CREATE TABLE {hostile_board} (key TEXT PRIMARY KEY)"}

            @handles
            async def on_pinged(self, event: Pinged) -> None:
                self.execute("INSERT INTO {hostile_board} (key) VALUES (?)", (event.key,))


@pytest.mark.parametrize("table", ['board"; DROP TABLE tidings_journal; --', "Board", "a" * 55])
def test_a_projection_table_that_is_not_a_lowercase_identifier_is_refused(table: str) -> None:
    # A capital would be folded away in the DDL but kept by the quoted DROP and RENAME of a rebuild;
    # 55 characters plus the rebuild's suffix would be truncated by PostgreSQL.
    with pytest.raises(InvalidName, match=r"lowercase letters, digits and underscores"):

        class _Board(Projection, name="board"):
            tables = {table: "CREATE TABLE {" + table + "} (key TEXT PRIMARY KEY)"}


@pytest.mark.parametrize("name", HOSTILE_COMPONENT_NAMES)
def test_a_saga_with_a_hostile_name_is_refused_with_what_is_allowed(name: str) -> None:
    with pytest.raises(InvalidName, match=r"saga name .* is not allowed"):

        class _Saga(Saga, name=name, context="test"):
            pass


def test_ordinary_names_are_accepted() -> None:
    # The names tidings' own examples use keep working.
    for name in ("numbers", "billing-usage", "licensing.usage_by_day", "test.purchase-reader", "asset:index"):
        assert Consumer(name).name == name
