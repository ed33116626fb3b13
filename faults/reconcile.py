"""``python -m faults reconcile --json``: inject each kind of discrepancy into the fulfilment flow; reconcile must find and repair it.

On a private PostgreSQL (wal_level=logical) the retailer's flow runs (legacy DE orders through CDC,
AT orders from the new Ordering context, Shipping consuming over the ``local`` broker). With every
worker stopped, one discrepancy of each kind is made:

    broker_message_dropped     an outbox row marked delivered whose message never reached the broker
    inbox_and_effect_deleted   Shipping's inbox row of an order and its effect (shipment, events, read-model row) deleted
    read_model_corrupted       a row of ``shipping_awaiting_release`` changed
    legacy_event_skipped       a legacy acceptance the CDC slot was moved past (a dual write that produced no event)
    message_duplicated         a message stored twice on the broker

The workers start again, ``Reconciler.find`` runs, then ``repair``; the flow settles and the checks
run again. Printed: ``injected``, ``found``, ``repaired`` per kind and ``applied_twice`` (orders
with more than one shipment opened). ``repaired`` for a duplicate means no repair was needed and
the order was applied once (the inbox absorbed the copy). Exit 0 only if found and repaired equal
injected, applied_twice is 0, and nothing unexpected was reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

__all__ = ["main", "run"]

KINDS = {
    "broker_message_dropped": "not_applied",
    "inbox_and_effect_deleted": "not_applied",
    "read_model_corrupted": "read_model_differs",
    "legacy_event_skipped": "missing_event",
    "message_duplicated": "duplicate",
}


async def run(seed: int = 1) -> dict[str, Any]:
    """One run on a private logical cluster; the figures."""
    from faults.servers import PostgresCluster

    root = Path(tempfile.mkdtemp(prefix="tidings-reconcile-"))
    root.chmod(0o755)
    cluster = PostgresCluster(root / "pg", settings={"wal_level": "logical", "max_replication_slots": "10", "max_wal_senders": "10"})
    await cluster.start()
    try:
        name = f"reconcile_{uuid.uuid4().hex[:8]}"
        async with await psycopg.AsyncConnection.connect(cluster.url, autocommit=True) as conn:
            await conn.execute(f'CREATE DATABASE "{name}"')  # a name made here, never from input
        return await _scenario(cluster.url.rsplit("/", 1)[0] + f"/{name}", random.Random(seed))
    finally:
        await cluster.stop()
        cluster.destroy()


async def _scenario(url: str, rng: random.Random) -> dict[str, Any]:
    from examples.fulfilment.platform import SLOT, Fulfilment
    from examples.fulfilment.reconciling import reconciler
    from examples.fulfilment.scenario import Storefront, awaiting
    from examples.fulfilment.shipping.application import AWAITING_RELEASE, CONSUMER

    started = time.monotonic()
    async with Fulfilment(url) as system:
        shop = Storefront(system)
        await system.switch("DE", "legacy")
        await system.switch("AT", "ordering")
        await system.start()
        de = [f"DE-{n}" for n in range(1, 7)]
        at = [f"AT-{n}" for n in range(1, 5)]
        for order_id in de + at:
            await shop.order(order_id, order_id[:2], amount=f"{rng.randint(1, 999)},{rng.randint(0, 99):02d}", qty=rng.randint(1, 5))
        if not await system.settle(lambda: _all_there(system, set(de + at)), timeout=60):
            raise RuntimeError(f"the flow did not settle before the injections: {sorted(set(de + at) - await awaiting(system))}")
        await system.stop()

        # -- the injections, with every worker stopped -------------------------------------------
        chosen = rng.sample(de, 3)
        targets = {
            "legacy_event_skipped": "DE-7",
            "broker_message_dropped": "AT-5",
            "inbox_and_effect_deleted": chosen[0],
            "read_model_corrupted": chosen[1],
            "message_duplicated": chosen[2],
        }
        # A legacy acceptance, then the slot moved past it: CDC never sees it.
        await system.legacy.enter("DE-7", "DE", "S", "12,00", "SKU-7", 1)
        await system.legacy.release("DE-7")
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute("SELECT pg_replication_slot_advance(%s, pg_current_wal_lsn())", (SLOT,))
        # An order of the new context whose message the broker lost after confirming it.
        await shop.order("AT-5", "AT", amount="7,50")
        await system.store.run("UPDATE tidings_outbox SET delivered_at = CURRENT_TIMESTAMP WHERE partition_key = ?", ("AT-5",))
        # Shipping's inbox row and everything the message did, gone.
        key = targets["inbox_and_effect_deleted"]
        async with system.store.transaction() as tx:
            await tx.run(
                "DELETE FROM tidings_inbox WHERE consumer = ? AND event_id IN (SELECT event_id::text FROM tidings_outbox WHERE partition_key = ?)",
                (CONSUMER, key),
            )
            await tx.run("DELETE FROM tidings_aggregate_state WHERE aggregate_id = ? AND aggregate_type LIKE ?", (key, "%Shipment"))
            await tx.run("DELETE FROM tidings_journal WHERE envelope->>'aggregate_id' = ? AND event_type LIKE ?", (key, "%Shipment%"))
            await tx.run(f"DELETE FROM {AWAITING_RELEASE} WHERE order_id = ?", (key,))
        # A read-model row changed behind Shipping's back.
        await system.store.run(f"UPDATE {AWAITING_RELEASE} SET quantity = quantity + 40 WHERE order_id = ?", (targets["read_model_corrupted"],))
        # A message stored twice on the broker (the local broker's log).
        await system.store.run(
            "INSERT INTO tidings_local_log (topic, partition, key, event_id, headers, payload, replay) "
            "SELECT topic, partition, key, event_id, headers, payload, 99 FROM tidings_local_log WHERE key = ?",
            (targets["message_duplicated"],),
        )

        # -- find, with the workers running again -------------------------------------------------
        await system.start()
        await system.settle(lambda: _consumed_copy(system, targets["message_duplicated"]), timeout=20)
        await system.settle(lambda: _quiet(system), timeout=20)
        checks = reconciler(system.store, grace=0)
        report = await checks.find()
        found = {kind: int(any(f.kind == KINDS[kind] and f.key == targets[kind] for f in report.findings)) for kind in KINDS}
        expected_pairs = {(KINDS[kind], targets[kind]) for kind in KINDS}
        unexpected = [f.as_dict() for f in report.findings if (f.kind, f.key) not in expected_pairs]

        # -- repair, settle, look again -----------------------------------------------------------
        await checks.repair(report, command_line="python -m faults reconcile", per_second=50)
        everything = set(de + at) | {"DE-7", "AT-5"}
        await system.settle(lambda: _all_there(system, everything), timeout=30)
        await system.settle(lambda: _quiet(system), timeout=20)
        after = await checks.find()
        left = {(f.kind, f.key) for f in after.findings}
        repaired = {}
        for kind in KINDS:
            pair = (KINDS[kind], targets[kind])
            if kind == "message_duplicated":
                # Nothing to repair: the copy stays on the broker; the order must have been applied once.
                repaired[kind] = int(found[kind] == 1 and await _shipments(system, targets[kind]) == 1)
            else:
                done = any(r.finding.key == targets[kind] and r.finding.kind == KINDS[kind] and r.outcome.startswith("done") for r in report.repairs)
                repaired[kind] = int(done and pair not in left)
        opened = await system.store.fetch(
            "SELECT envelope->>'aggregate_id', count(*) FROM tidings_journal WHERE event_type LIKE ? GROUP BY 1", ("%ShipmentOpened",)
        )
        applied_twice = sum(int(n) - 1 for _, n in opened if int(n) > 1)
        missing_shipments = sorted(everything - {str(k) for k, _ in opened})
        audited = int((await system.store.fetch("SELECT count(*) FROM tidings_reconcile_audit"))[0][0])
        remaining = [f.as_dict() for f in after.findings if f.kind != "duplicate"]
    return {
        "scenario": "reconcile",
        "injected": dict.fromkeys(KINDS, 1),
        "found": found,
        "repaired": repaired,
        "applied_twice": applied_twice,
        "unexpected_findings": unexpected,
        "remaining_findings": remaining,
        "orders_without_shipment": missing_shipments,
        "repairs_audited": audited,
        "targets": targets,
        "seconds": round(time.monotonic() - started, 1),
    }


async def _all_there(system: Any, orders: set[str]) -> bool:
    from examples.fulfilment.scenario import awaiting

    return orders <= await awaiting(system)


async def _quiet(system: Any) -> bool:
    rows = await system.store.fetch("SELECT count(*) FROM tidings_outbox WHERE delivered_at IS NULL AND parked_at IS NULL")
    return int(rows[0][0]) == 0 and system.consumer.in_flight == 0


async def _consumed_copy(system: Any, key: str) -> bool:
    # The copy was read and skipped by the inbox (nothing else is a duplicate in this run).
    return bool(system.consumer.stats.duplicates >= 1)


async def _shipments(system: Any, key: str) -> int:
    rows = await system.store.fetch(
        "SELECT count(*) FROM tidings_journal WHERE envelope->>'aggregate_id' = ? AND event_type LIKE ?", (key, "%ShipmentOpened")
    )
    return int(rows[0][0])


def passed(result: dict[str, Any]) -> list[str]:
    """What makes the run fail, in words (empty: it passed)."""
    failures = []
    for kind, n in result["injected"].items():
        if result["found"][kind] != n or result["repaired"][kind] != n:
            failures.append(f"{kind}: injected {n}, found {result['found'][kind]}, repaired {result['repaired'][kind]}")
    if result["applied_twice"]:
        failures.append(f"applied_twice = {result['applied_twice']}")
    if result["unexpected_findings"]:
        failures.append(f"{len(result['unexpected_findings'])} unexpected finding(s)")
    if result["orders_without_shipment"]:
        failures.append(f"orders without a shipment: {result['orders_without_shipment']}")
    return failures


def main(argv: list[str] | None = None) -> int:
    """Run it; print the figures; exit 0 only if every discrepancy was found and repaired and nothing was applied twice."""
    parser = argparse.ArgumentParser(prog="python -m faults reconcile", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1, help="chooses which orders get which discrepancy")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.seed))
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(f"{name:>24}: {value}")
    failures = passed(result)
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0
