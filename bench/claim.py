"""The relay's claim with millions of delivered rows behind it, against the same claim on a table without history."""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

from bench.harness import Progress
from tidings.store import open_store
from tidings.store.outbox import Outbox

NAME = "claim"

_DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of this benchmark."""
    parser.add_argument("--database-url", default=_DEFAULT_URL)
    parser.add_argument("--delivered", type=int, default=2_000_000, help="delivered rows of history")
    parser.add_argument("--pending", type=int, default=50_000, help="undelivered rows to claim from (the backlog)")
    parser.add_argument("--seconds", type=float, default=3.0, help="time spent claiming per table")
    parser.add_argument("--batch", type=int, default=500, help="rows per claim")


async def _fill(store: Any, delivered: int, pending: int, progress: Progress) -> None:
    # Generated in the database: the point is the table's shape, not how fast we can insert.
    step = 250_000
    envelope = '{"event_type": "bench.Filled", "schema_version": 1}'
    payload = '{"pad": "' + "x" * 400 + '"}'
    with progress.task("history (delivered rows)", delivered):
        for start in range(0, delivered, step):
            n = min(step, delivered - start)
            await store.run(
                "INSERT INTO tidings_outbox (event_id, partition, partition_key, topic, event_type, envelope, payload, delivered_at) "
                "SELECT gen_random_uuid(), g % 32, 'k' || (g % 5000), 'bench', 'bench.Filled', ?::jsonb, ?::jsonb, now() "
                "FROM generate_series(1, ?) g",
                (envelope, payload, n),
            )
            progress.advance(n)
    await store.run(
        "INSERT INTO tidings_outbox (event_id, partition, partition_key, topic, event_type, envelope, payload) "
        "SELECT gen_random_uuid(), g % 32, 'k' || (g % 5000), 'bench', 'bench.Filled', ?::jsonb, ?::jsonb "
        "FROM generate_series(1, ?) g",
        (envelope, payload, pending),
    )
    await store.run("ANALYZE tidings_outbox")


async def _claims_per_second(outbox: Outbox, seconds: float, batch: int, progress: Progress, label: str) -> tuple[float, float]:
    partitions = list(range(32))
    count, worst = 0, 0.0
    with progress.task(label, seconds):
        start = last = time.perf_counter()
        while (now := time.perf_counter()) - start < seconds:
            t = time.perf_counter()
            rows = await outbox.claim(partitions, batch)
            worst = max(worst, time.perf_counter() - t)
            assert len(rows) == batch, f"claimed {len(rows)} rows, expected {batch}"
            count += 1
            progress.advance(now - last)
            last = now
    return count / (time.perf_counter() - start), worst * 1000


async def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Claims/s on a table with ``--delivered`` rows of history (ours) and on one without (raw)."""
    results: dict[str, tuple[float, float]] = {}
    for label, delivered in (("with history", args.delivered), ("without history", 0)):
        schema = f"bench_claim_{uuid.uuid4().hex[:8]}"
        store = await open_store(args.database_url, schema=schema, migrate=True)
        try:
            await _fill(store, delivered, args.pending, progress)
            results[label] = await _claims_per_second(Outbox(store), args.seconds, args.batch, progress, f"claiming ({label})")
            plan = await store.fetch(
                "EXPLAIN SELECT id FROM tidings_outbox o WHERE o.partition IN (0,1,2,3) AND o.delivered_at IS NULL "
                "AND o.parked_at IS NULL ORDER BY o.id LIMIT 500"
            )
        finally:
            await store.drop_schema()  # type: ignore[attr-defined]
            await store.close()
    ours, ours_worst = results["with history"]
    raw, raw_worst = results["without history"]
    return {
        "name": NAME,
        "ours": round(ours, 1),
        "raw": round(raw, 1),
        "ratio": round(ours / raw, 3),
        "units": f"claims/s of {args.batch} rows (ours: {args.delivered:,} delivered rows of history; raw: none)",
        "worst_ms_with_history": round(ours_worst, 2),
        "worst_ms_without_history": round(raw_worst, 2),
        "plan_with_history_first_line": plan[0][0] if plan else "",
    }
