"""``python -m examples.fulfilment demo``: the migration story, checked step by step (exit 0 only if every outcome was seen).

1. Legacy orders of DE and AT flow from the monolith's rows through CDC and the ACL to Shipping.
2. AT is cut over mid-run: ``both`` (an order seen by both systems is published twice and
   fulfilled once), then ``ordering`` (the new context alone publishes; the ACL drops AT rows).
   DE keeps flowing through the legacy path meanwhile.
3. A legacy row with a garbage amount is dead-lettered by the ACL with the column and reason, and
   the orders after it flow on.
4. A read-model row corrupted behind Shipping's back is found and rewritten by ``tidings reconcile
   --repair`` (audited); a second run finds only DE-9's dead letter.
5. "Why did warehouse release not happen for order DE-9?" is answered by one command:
   ``tidings trace order:DE-9`` shows the legacy change and its dead letter.

The demo starts a private PostgreSQL with ``wal_level=logical`` (the machine's own server is never
reconfigured) unless ``--database`` names one that already runs with it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from examples.fulfilment.contracts import TENANT, order_correlation
from examples.fulfilment.ordering.domain import AcceptOrder, PlaceOrder
from examples.fulfilment.platform import SLOT, Fulfilment
from examples.fulfilment.shipping.application import AWAITING_RELEASE, DUPLICATES
from tidings.messaging import MessageContext

__all__ = ["Story", "main", "run_story"]

REPO = Path(__file__).resolve().parents[2]


class Story:
    """The checks of one run: each expected outcome, seen or not."""

    def __init__(self, out: Any = None) -> None:
        self.results: list[tuple[str, bool, str]] = []
        self.out = out or sys.stdout

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        self.results.append((what, ok, detail))
        mark = "✓" if ok else "✗"
        print(f"  {mark} {what}" + (f" — {detail}" if detail and not ok else ""), file=self.out, flush=True)
        return ok

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(ok for _, ok, _ in self.results)


class Storefront:
    """The shop during the migration: every order goes to the legacy OMS and to the new Ordering context (a dual write)."""

    def __init__(self, system: Fulfilment) -> None:
        self.system = system
        self.lines: dict[str, tuple[str, str, str, int]] = {}

    async def order(self, order_id: str, market: str, amount: str = "49,90", sku: str = "SKU-1", qty: int = 1, *, channel: str = "W") -> None:
        """Enter and release one order in the monolith, then place and accept it in Ordering."""
        await self.system.legacy.enter(order_id, market, channel, amount, sku, qty)
        await self.system.legacy.release(order_id)
        context = MessageContext(correlation_id=order_correlation(order_id), tenant=TENANT)
        cents = _cents_or_zero(amount)
        words = {"W": "web", "S": "store", "T": "phone"}[channel]
        await self.system.ordering.handle(
            PlaceOrder(order_id=order_id, market=market, channel=words, total_cents=cents, currency="EUR", sku=sku, quantity=qty),
            context=context,
        )
        await self.system.ordering.handle(AcceptOrder(order_id=order_id, accepted_at=datetime.now(UTC).isoformat()), context=context)


def _cents_or_zero(amount: str) -> int:
    try:
        units, _, cents = amount.replace(".", "").partition(",")
        return int(units) * 100 + int(cents or 0)
    except ValueError:
        return 0


async def shipments(system: Fulfilment) -> dict[str, int]:
    """Order id → how many shipments Shipping opened for it."""
    rows = await system.store.fetch(
        "SELECT envelope->>'aggregate_id', count(*) FROM tidings_journal WHERE event_type LIKE ? GROUP BY 1", ("%ShipmentOpened",)
    )
    return {str(k): int(n) for k, n in rows}


async def awaiting(system: Fulfilment) -> set[str]:
    return {str(r[0]) for r in await system.store.fetch(f"SELECT order_id FROM {AWAITING_RELEASE}")}


async def publications(system: Fulfilment, order_id: str) -> list[str]:
    """Who published the contract for an order: "legacy" (a CDC-captured change) or "ordering", in outbox order."""
    rows = await system.store.fetch(
        "SELECT envelope->>'causation_id' FROM tidings_outbox WHERE partition_key = ? AND topic = ? ORDER BY id",
        (order_id, "ordering.order-accepted-for-fulfillment"),
    )
    return ["legacy" if str(cause or "").startswith("cdc:") else "ordering" for (cause,) in rows]


async def run_story(database_url: str, broker_url: str = "local:", story: Story | None = None) -> Story:
    """The story on a logical-decoding database (a fresh one: the slot sees only what commits after it)."""
    story = story or Story()
    async with Fulfilment(database_url, broker_url) as system:
        shop = Storefront(system)
        await system.switch("DE", "legacy")
        await system.switch("AT", "legacy")
        await system.start()
        try:
            story.say("1. legacy orders flow through CDC and the ACL")
            for order_id, market in (("DE-1", "DE"), ("DE-2", "DE"), ("AT-1", "AT"), ("AT-2", "AT")):
                await shop.order(order_id, market, amount="1.234,50" if order_id == "DE-1" else "49,90")
            first = {"DE-1", "DE-2", "AT-1", "AT-2"}
            await system.settle(lambda: _has(system, first))
            story.check("DE-1, DE-2, AT-1, AT-2 await warehouse release", first <= await awaiting(system), str(await awaiting(system)))
            story.check(
                "each was published by the legacy OMS through CDC, once",
                all([await publications(system, o) == ["legacy"] for o in sorted(first)]),
                str({o: await publications(system, o) for o in sorted(first)}),
            )
            rows = await system.store.fetch("SELECT payload::text FROM tidings_outbox WHERE partition_key = 'DE-1'")
            story.check("the ACL read '1.234,50' as 123450 cents", bool(rows) and '"total_cents":123450' in rows[0][0].replace(" ", ""), str(rows))

            story.say("2. AT is cut over mid-run: legacy → both → ordering, while DE stays on legacy")
            await system.switch("AT", "both")
            await shop.order("AT-3", "AT")
            await shop.order("DE-3", "DE")
            await system.settle(lambda: _published(system, "AT-3", 2))
            await system.settle(lambda: _has(system, {"AT-3", "DE-3"}))
            await system.settle(lambda: _duplicates(system, "AT-3", 1), timeout=10)
            story.check("under 'both', AT-3 was published by both systems", sorted(await publications(system, "AT-3")) == ["legacy", "ordering"],
                        str(await publications(system, "AT-3")))  # fmt: skip
            opened = await shipments(system)
            story.check("…and Shipping opened exactly one shipment for it", opened.get("AT-3") == 1, str(opened.get("AT-3")))
            story.check("…recording the second acceptance as a duplicate by business key", await _duplicates(system, "AT-3", 1))
            await system.switch("AT", "ordering")
            await shop.order("AT-4", "AT")
            await shop.order("DE-4", "DE")
            await system.settle(lambda: _has(system, {"AT-4", "DE-4"}))
            await system.settle(await system.caught_up())
            story.check("under 'ordering', AT-4 was published by the new Ordering context only", await publications(system, "AT-4") == ["ordering"],
                        str(await publications(system, "AT-4")))  # fmt: skip
            story.check("DE-3 and DE-4 still came from the legacy OMS", [await publications(system, o) for o in ("DE-3", "DE-4")] == [["legacy"], ["legacy"]])

            story.say("3. a garbage legacy row is dead-lettered with its reason; the rest flows")
            await shop.order("DE-9", "DE", amount="zwölf Euro")
            await shop.order("DE-10", "DE")
            await system.settle(lambda: _has(system, {"DE-10"}))
            await system.settle(await system.caught_up())
            dead = await system.store.fetch(
                "SELECT partition_key, reason, error FROM tidings_dead_letters WHERE consumer = ? ORDER BY id", (f"cdc:{SLOT}",)
            )
            story.check("DE-9 is dead-lettered by the ACL naming column 'amt' and the value",
                        [(k, r) for k, r, _ in dead] == [("DE-9", "unreadable row")] and "'amt'" in dead[0][2] and "zwölf" in dead[0][2],
                        str(dead))  # fmt: skip
            story.check("DE-9 has no shipment; DE-10 after it awaits release", "DE-9" not in await awaiting(system) and "DE-10" in await awaiting(system))
            opened = await shipments(system)
            expected = {"DE-1", "DE-2", "DE-3", "DE-4", "DE-10", "AT-1", "AT-2", "AT-3", "AT-4"}
            story.check("every accepted, readable order has exactly one shipment", opened == dict.fromkeys(expected, 1), str(opened))

            story.say("4. a read-model row is corrupted behind Shipping's back; tidings reconcile finds and repairs it")
            await system.store.run(f"UPDATE {AWAITING_RELEASE} SET quantity = 40 WHERE order_id = 'DE-2'")
            report = _reconcile(database_url, "--repair")
            ours = [r for r in report.get("repairs", []) if r["finding"]["key"] == "DE-2"]
            story.check("reconcile reported DE-2's row as different from its shipment and rewrote it (audited)",
                        [(r["finding"]["kind"], r["outcome"][:5]) for r in ours] == [("read_model_differs", "done:")], str(report)[-600:])  # fmt: skip
            rows = await system.store.fetch(f"SELECT quantity FROM {AWAITING_RELEASE} WHERE order_id = 'DE-2'")
            story.check("DE-2's row holds the shipment's quantity again", rows == [(1,)], str(rows))
            left = [(f["kind"], f["key"]) for f in _reconcile(database_url).get("findings", [])]
            story.check("a second reconcile finds nothing but DE-9's dead letter (stuck: fix the source row)", left == [("stuck", "DE-9")], str(left))
        finally:
            await system.stop()

    story.say("5. why did warehouse release not happen for order DE-9?  →  tidings trace order:DE-9")
    output = _trace(database_url, "order:DE-9")
    story.say("\n".join("     " + line for line in output.splitlines()))
    story.check("the trace shows the legacy change and the ACL's dead letter with its reason",
                "legacy" in output and "dead-lettered by cdc:" + SLOT in output and "amt" in output, output[-400:])  # fmt: skip
    output = _trace(database_url, "order:AT-3")
    story.check("tidings trace order:AT-3 shows both publications applied by Shipping",
                output.count("applied by shipping.order-acceptances") == 2 and "legacy change" in output, output[-600:])  # fmt: skip
    return story


def _trace(database_url: str, key: str) -> str:
    env = {**os.environ, "COLUMNS": "160"}
    result = subprocess.run(
        [sys.executable, "-m", "tidings.cli", "trace", key, "--database", database_url],
        capture_output=True, text=True, timeout=60, env=env, cwd=REPO,
    )  # fmt: skip
    return result.stdout + result.stderr


def _reconcile(database_url: str, *extra: str) -> dict[str, Any]:
    """``tidings reconcile --app examples.fulfilment.reconciling:reconciler --json`` as an operator runs it."""
    import json

    result = subprocess.run(
        [sys.executable, "-m", "tidings.cli", "reconcile", "--database", database_url, "--app",
         "examples.fulfilment.reconciling:reconciler", "--grace", "0", "--json", *extra],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    try:
        return dict(json.loads(result.stdout))
    except ValueError:
        return {"error": result.stdout[-800:] + result.stderr[-800:]}


async def _has(system: Fulfilment, orders: set[str]) -> bool:
    return orders <= await awaiting(system)


async def _published(system: Fulfilment, order_id: str, n: int) -> bool:
    return len(await publications(system, order_id)) >= n


async def _duplicates(system: Fulfilment, order_id: str, n: int) -> bool:
    rows = await system.store.fetch(f"SELECT count(*) FROM {DUPLICATES} WHERE order_id = ?", (order_id,))
    return int(rows[0][0]) == n


async def _with_private_cluster(broker_url: str, story: Story) -> Story:
    from faults.servers import PG_BIN, PostgresCluster

    if not (PG_BIN / "initdb").exists():
        raise SystemExit(f"the demo starts a private PostgreSQL with wal_level=logical, but initdb is not at {PG_BIN}")
    root = Path(tempfile.mkdtemp(prefix="tidings-fulfilment-"))
    root.chmod(0o755)
    cluster = PostgresCluster(root / "pg", settings={"wal_level": "logical", "max_replication_slots": "10", "max_wal_senders": "10"})
    story.say(f"starting a private PostgreSQL (wal_level=logical) on port {cluster.port} …")
    await cluster.start()
    try:
        name = f"fulfilment_{uuid.uuid4().hex[:8]}"
        async with await psycopg.AsyncConnection.connect(cluster.url, autocommit=True) as conn:
            await conn.execute(f'CREATE DATABASE "{name}"')  # a name made here, never from input
        return await run_story(cluster.url.rsplit("/", 1)[0] + f"/{name}", broker_url, story)
    finally:
        await cluster.stop()
        cluster.destroy()


def main(database_url: str | None = None, broker_url: str | None = None) -> int:
    """Run the story (on a private cluster unless ``database_url``); 0 only if every outcome was observed."""
    started = time.monotonic()
    story = Story()
    broker = broker_url or "local:"
    if database_url:
        asyncio.run(run_story(database_url, broker, story))
    else:
        asyncio.run(_with_private_cluster(broker, story))
    failed = [what for what, ok, _ in story.results if not ok]
    story.say(f"\n{len(story.results) - len(failed)}/{len(story.results)} outcomes observed in {time.monotonic() - started:.1f} s")
    return 0 if story.passed else 1
