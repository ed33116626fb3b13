"""Where SQLite work should run: on the event loop (our store), on a worker thread, or bare (raw)."""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import Progress
from tidings.messaging import new_id
from tidings.store import Changes, JournalEntry, OutboxEntry, StreamWrite
from tidings.store.sqlite import SqliteStore

NAME = "sqlite-offload"

_PAYLOAD = b'{"buyer":"buyer-0001","price_cents":1999,"note":"' + b"x" * 400 + b'"}'
_ENVELOPE = b'{"event_type":"LicensePurchased","schema_version":1}'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of this benchmark."""
    parser.add_argument("--commits", type=int, default=20_000, help="two-row commits per variant")


def _changes(i: int) -> Changes:
    event_id = new_id()
    stream = f"License:{i}"
    return Changes(
        streams=[StreamWrite("License", str(i), stream, 0)],
        journal=[
            JournalEntry(stream, 1, event_id, "LicensePurchased", 1, datetime.now(UTC), event_id, _ENVELOPE, _PAYLOAD)
        ],
        outbox=[OutboxEntry(new_id(), i % 32, str(i), "licensing", "LicensePurchased", _ENVELOPE, _PAYLOAD)],
    )


async def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Two-insert commits/s: our store (on the loop), the same via a worker thread, and bare sqlite3."""
    n = args.commits
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Raw: the same two inserts in one transaction, straight sqlite3, no asyncio at all.
        store = SqliteStore(Path(tmp) / "raw.db")
        await store.migrate()
        conn = store._conn  # the same connection settings as ours
        batch = [_changes(i) for i in range(n)]
        with progress.task("raw sqlite3", n):
            start = time.perf_counter()
            for changes in batch:
                store._write(conn, changes)
                progress.advance()
            rates["raw"] = n / (time.perf_counter() - start)
        await store.close()

        # Ours: SqliteStore.commit, awaited from coroutines, statements on the loop's thread.
        store = SqliteStore(Path(tmp) / "ours.db")
        await store.migrate()
        batch = [_changes(i) for i in range(n)]
        with progress.task("tidings (on the loop)", n):
            start = time.perf_counter()
            for changes in batch:
                await store.commit(changes)
                progress.advance()
            rates["ours"] = n / (time.perf_counter() - start)
        await store.close()

        # The alternative: every commit handed to a worker thread (what aiosqlite-style access costs at best).
        store = SqliteStore(Path(tmp) / "thread.db")
        await store.migrate()
        batch = [_changes(i) for i in range(n)]
        with progress.task("worker thread per commit", n):
            start = time.perf_counter()
            for changes in batch:
                await asyncio.to_thread(store._write, store._conn, changes)
                progress.advance()
            rates["thread"] = n / (time.perf_counter() - start)
        await store.close()
    return {
        "name": NAME,
        "ours": round(rates["ours"]),
        "raw": round(rates["raw"]),
        "ratio": round(rates["ours"] / rates["raw"], 3),
        "thread_per_commit": round(rates["thread"]),
        "thread_ratio": round(rates["thread"] / rates["raw"], 3),
        "units": "commits/s (journal + outbox row)",
        "commits": n,
    }
