"""Storage: the journal, aggregate state, snapshots, outbox, inbox and checkpoints, chosen by URL."""

from __future__ import annotations

import os
from typing import Any

from tidings.messaging.redaction import redact_url
from tidings.store.base import Store
from tidings.store.errors import PermanentDatabaseError
from tidings.store.lazy import NoTransaction
from tidings.store.names import InvalidName
from tidings.store.records import (
    Changes,
    JournalEntry,
    OutboxEntry,
    OutboxRow,
    SnapshotRow,
    StateRow,
    StoredEvent,
    StreamWrite,
)

__all__ = [
    "Changes",
    "InvalidName",
    "JournalEntry",
    "NoTransaction",
    "OutboxEntry",
    "OutboxRow",
    "PermanentDatabaseError",
    "SnapshotRow",
    "StateRow",
    "Store",
    "StoredEvent",
    "StreamWrite",
    "DEFAULT_DATABASE_URL",
    "open_store",
]

DEFAULT_DATABASE_URL = "sqlite:///tidings.db"


async def open_store(url: str | None = None, *, migrate: bool | None = None, **options: Any) -> Store:
    """Open the store named by ``url`` (or ``TIDINGS_DATABASE_URL``, or the embedded default).

    ``sqlite:///path/to/file.db`` (``sqlite:///:memory:`` for a throwaway one) or ``postgresql://…``
    (options: ``schema=``, and ``tenant=`` for row-level security, see tidings.store.row_security).
    Migrations run automatically for SQLite; for PostgreSQL pass ``migrate=True`` or run
    ``tidings db migrate`` once per deployment.
    """
    url = url or os.environ.get("TIDINGS_DATABASE_URL") or DEFAULT_DATABASE_URL
    store: Store
    if url.startswith("sqlite://"):
        from tidings.store.sqlite import SqliteStore

        path = url.removeprefix("sqlite://").removeprefix("/") or ":memory:"
        if options.get("tenant") is not None:
            raise ValueError(
                "open_store(tenant=…) binds a PostgreSQL store to one tenant for row-level security; SQLite has "
                "none — isolate tenants with MessageContext(tenant=…) on each command (docs/decisions/0018)"
            )
        options.pop("tenant", None)
        store = SqliteStore(path, **options)
        migrate = True if migrate is None else migrate
    elif url.startswith(("postgresql://", "postgres://")):
        try:
            from tidings.store.postgres import PostgresStore
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError("PostgreSQL needs the postgres extra: pip install 'tidings[postgres]'") from exc
        store = await PostgresStore.open(url, **options)
    else:
        raise ValueError(
            f"unsupported database URL {redact_url(url)!r}: use sqlite:///path/to/file.db or postgresql://user@host/db"
        )
    if migrate:
        await store.migrate()
    return store
