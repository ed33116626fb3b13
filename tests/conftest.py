"""Fixtures that start from the real services: SQLite files and a PostgreSQL schema per test.

Outside CI a test whose service is unreachable is skipped with the reason; with CI=true it fails,
so a missing server can never turn into a green run.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tidings.store import Store, open_store

POSTGRES_URL = os.environ.get("TIDINGS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

StoreFactory = Callable[[], Awaitable[Store]]


def require_service(name: str, host: str, port: int) -> None:
    """Fail (under CI) or skip (elsewhere) unless ``host:port`` accepts a TCP connection."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError as exc:
        reason = f"{name} is not reachable on {host}:{port} ({exc}); start it (see .ci/run)"
    if IN_CI:
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(f"{reason}; under CI=true this test fails instead")


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
            await store.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')  # type: ignore[attr-defined]
        await store.close()


@pytest.fixture
async def store(store_factory: StoreFactory) -> Store:
    """One migrated store of each backend (the conformance parameter)."""
    return await store_factory()
