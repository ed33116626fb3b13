"""A private PostgreSQL with wal_level=logical, and fresh databases in it, for the tests of change data capture.

The machine's own PostgreSQL runs wal_level=replica and is never reconfigured: these start their
own cluster (initdb + pg_ctl as the postgres user, on a free port) and remove it afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import psycopg

from support import unavailable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from faults.servers import PG_BIN, PostgresCluster  # noqa: E402

__all__ = ["PG_BIN", "PostgresCluster", "fresh_database", "logical_cluster"]


@contextlib.contextmanager
def logical_cluster(who: str) -> Iterator[PostgresCluster]:
    """A running private cluster with logical decoding on; ``who`` names the tests needing it (in errors and the directory)."""
    if not (PG_BIN / "initdb").exists():
        unavailable(f"PostgreSQL's initdb is not installed at {PG_BIN} (the {who} tests start a private logical cluster)")
    root = Path(tempfile.mkdtemp(prefix=f"tidings-{who}-"))
    root.chmod(0o755)  # the cluster runs as the postgres user and must reach its directory
    server = PostgresCluster(root / "pg", settings={"wal_level": "logical", "max_replication_slots": "20", "max_wal_senders": "20"})
    asyncio.run(server.start())
    try:
        yield server
    finally:
        asyncio.run(server.stop())
        server.destroy()


@contextlib.asynccontextmanager
async def fresh_database(cluster: PostgresCluster, prefix: str, ddl: Sequence[str] = ()) -> AsyncIterator[str]:
    """A new database in ``cluster`` with ``ddl`` run in it; its URL. Its slots and the database go afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    async with await psycopg.AsyncConnection.connect(cluster.url, autocommit=True) as conn:
        await conn.execute(f'CREATE DATABASE "{name}"')  # a name made here, never from input
    url = cluster.url.rsplit("/", 1)[0] + f"/{name}"
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for statement in ddl:
            await conn.execute(statement)
    try:
        yield url
    finally:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active")
        async with await psycopg.AsyncConnection.connect(cluster.url, autocommit=True) as conn:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
