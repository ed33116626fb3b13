"""The tidings pytest plugin: fixtures for a SQLite store, a PostgreSQL store and the in-memory harness.

Installed with tidings (entry point ``pytest11``), so a user's test asks for ``tidings_sqlite_store``,
``tidings_postgres_store`` or ``tidings_harness`` by name. The fixtures are async and need
pytest-asyncio; they work in its strict mode too (mark the tests ``@pytest.mark.asyncio``).

PostgreSQL is read from ``TIDINGS_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``);
each test gets a schema of its own, dropped afterwards. When the server is unreachable the test is
skipped with the reason, except under ``CI=true``, where it fails: a missing server must never
turn into a green CI run.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import pytest

from tidings.messaging.personal import MASTER_KEY_ENV, MasterKey
from tidings.messaging.redaction import redact_url
from tidings.store import open_store
from tidings.store.base import Store
from tidings.testing.harness import AppFactory, Harness, HarnessFactory

__all__ = ["tidings_harness", "tidings_postgres_store", "tidings_sqlite_store"]

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - depends on the user's environment
    # The plugin is loaded in every pytest run where tidings is installed; a missing optional
    # dependency must break only the tests that ask for these fixtures, and say why.
    pytest_asyncio = None  # type: ignore[assignment]


def _fixture(fn: Callable[..., Any]) -> Any:
    if pytest_asyncio is not None:
        return pytest_asyncio.fixture(fn)

    @pytest.fixture(name=fn.__name__)
    def needs_pytest_asyncio() -> NoReturn:
        pytest.fail(f"the {fn.__name__} fixture is async: pip install pytest-asyncio", pytrace=False)

    needs_pytest_asyncio.__doc__ = fn.__doc__
    return needs_pytest_asyncio


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _unavailable(reason: str) -> NoReturn:
    if _in_ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(f"{reason}; under CI=true this test fails instead")


@_fixture
async def tidings_sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    """A migrated SQLite store on a fresh file in the test's tmp_path, closed after the test."""
    store = await open_store(f"sqlite:///{tmp_path / 'tidings-test.db'}", migrate=True)
    try:
        yield store
    finally:
        await store.close()


@_fixture
async def tidings_postgres_store() -> AsyncIterator[Store]:
    """A migrated PostgreSQL store on a schema of its own, dropped after the test; skipped if the server is down."""
    url = os.environ.get("TIDINGS_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    parts = urlsplit(url)
    if parts.hostname and not parts.hostname.startswith("/"):
        # A TCP probe first: the store's pool would otherwise wait its full connect timeout.
        try:
            with socket.create_connection((parts.hostname, parts.port or 5432), timeout=2):
                pass
        except OSError as exc:
            _unavailable(
                f"PostgreSQL is not reachable at {redact_url(url)} ({exc}); start it or set TIDINGS_TEST_POSTGRES_URL"
            )
    schema = f"tidings_test_{uuid.uuid4().hex[:12]}"
    try:
        store = await open_store(url, schema=schema, migrate=True)
    except (ConnectionError, RuntimeError) as exc:  # RuntimeError: the postgres extra is not installed
        _unavailable(f"no PostgreSQL store at {redact_url(url)}: {exc}")
    try:
        yield store
    finally:
        try:
            await store.drop_schema()  # type: ignore[attr-defined]
        finally:
            await store.close()


@_fixture
async def tidings_harness() -> AsyncIterator[HarnessFactory]:
    """A factory of in-memory harnesses: ``h = await tidings_harness(build)``; all are closed after the test.

    Without ``TIDINGS_MASTER_KEY`` in the environment, the test gets a fresh one (its store is
    fresh too), so messages with personal fields are sealed and opened as in production.
    """
    opened: list[Harness] = []
    own_key = not os.environ.get(MASTER_KEY_ENV, "").strip()
    if own_key:
        os.environ[MASTER_KEY_ENV] = MasterKey.generate()

    async def open_harness(app_factory: AppFactory, *, store: Store | None = None) -> Harness:
        harness = await Harness.open(app_factory, store=store)
        opened.append(harness)
        return harness

    try:
        yield open_harness
    finally:
        if own_key:
            os.environ.pop(MASTER_KEY_ENV, None)
        for harness in opened:
            await harness.close()
