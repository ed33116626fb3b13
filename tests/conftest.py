"""Fixtures that start from the real services: SQLite files and a PostgreSQL schema per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from support import POSTGRES_URL, StoreFactory, require_service
from tidings.store import Store, open_store


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Opens stores on one fresh database (a SQLite file, or a PostgreSQL schema of its own), migrated."""
    opened: list[Store] = []
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'tidings.db'}"

        async def factory() -> Store:
            store = await open_store(url)
            opened.append(store)
            return store

    else:
        require_service("PostgreSQL", "127.0.0.1", 5432)
        schema = f"t_{uuid.uuid4().hex[:12]}"

        async def factory() -> Store:
            store = await open_store(POSTGRES_URL, schema=schema, migrate=True)
            opened.append(store)
            return store

    yield factory
    for store in opened:
        if request.param == "postgresql" and store is opened[0]:
            await store.drop_schema()  # type: ignore[attr-defined]
        await store.close()


@pytest.fixture
async def postgres_store_factory() -> AsyncIterator[StoreFactory]:
    """Opens PostgreSQL stores on one fresh schema (for what only PostgreSQL does, like several relays)."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    opened: list[Store] = []

    async def factory() -> Store:
        store = await open_store(POSTGRES_URL, schema=schema, migrate=True)
        opened.append(store)
        return store

    yield factory
    if opened:
        await opened[0].drop_schema()  # type: ignore[attr-defined]
    for store in opened:
        await store.close()


@pytest.fixture
async def store(store_factory: StoreFactory) -> Store:
    """One migrated store of each backend (the conformance parameter)."""
    return await store_factory()
