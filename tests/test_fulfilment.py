"""The retailer's fulfilment migration (examples/fulfilment): the ACL, the strangler cut-over, and the demo.

Runs on a private PostgreSQL with wal_level=logical (the machine's own server is never reconfigured),
one fresh database per test, the ``local:`` broker (the store's own log).
"""

from __future__ import annotations

import ast
import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from examples.fulfilment.contracts import TENANT, order_correlation
from examples.fulfilment.legacy.acl import LegacyAcl
from examples.fulfilment.ordering.domain import AcceptOrder, PlaceOrder
from examples.fulfilment.platform import Fulfilment
from examples.fulfilment.scenario import awaiting, publications, shipments
from examples.fulfilment.shipping.application import AWAITING_RELEASE, DUPLICATES
from support import unavailable
from tidings.cdc import Drop, Publish, RowChange, UnreadableRow
from tidings.messaging import MessageContext

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from logical_cluster import PG_BIN, PostgresCluster, fresh_database, logical_cluster  # noqa: E402


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    """A private PostgreSQL with wal_level=logical for this module."""
    with logical_cluster("fulfilment") as server:
        yield server


@pytest.fixture
async def database(cluster: PostgresCluster) -> AsyncIterator[str]:
    """A fresh database in the private cluster; its URL."""
    async with fresh_database(cluster, "ful") as url:
        yield url


def change(operation: str, old: dict[str, object] | None, new: dict[str, object] | None, table: str = "public.oms_orders") -> RowChange:
    row = new or old or {}
    key = str(row.get("ord_no", row.get("market")))
    return RowChange(table, operation, old, new, key, 7, 0x16B0000, datetime(2026, 3, 29, tzinfo=UTC), 0)


def legacy_row(**changes: object) -> dict[str, object]:
    row: dict[str, object] = {"ord_no": "1001", "mkt": "DE", "chan": "S", "sts": "OK", "amt": "1.234,50", "cur": "EUR",
                              "sku": "SKU-7", "qty": "2", "upd_local": "2026-03-29 03:30:00"}  # fmt: skip
    row.update(changes)
    return row


def test_the_acl_turns_a_legacy_release_into_the_contract_in_our_words() -> None:
    # Given a legacy order released from hold (HD → OK), entered in a store, at 03:30 Berlin summer time
    acl = LegacyAcl()
    published = acl.translate_order(change("update", legacy_row(sts="HD"), legacy_row()))

    # Then the contract speaks our language: a channel word, cents, UTC, keyed and routed by order
    assert isinstance(published, Publish) and published.key == "1001"
    event = published.event
    assert (event.channel, event.total_cents, event.quantity) == ("store", 123450, 2)
    assert event.accepted_at == "2026-03-29T01:30:00+00:00"


def test_the_acl_drops_what_is_no_acceptance_and_refuses_what_it_cannot_read() -> None:
    acl = LegacyAcl()
    dropped = acl.translate_order(change("update", legacy_row(sts="NW", amt="1,00"), legacy_row(sts="NW", amt="2,00")))
    assert isinstance(dropped, Drop) and "no acceptance" in dropped.reason
    with pytest.raises(UnreadableRow, match="unknown legacy status code 'Q!'") as status:
        acl.translate_order(change("update", legacy_row(sts="NW"), legacy_row(sts="Q!")))
    assert status.value.column == "sts"
    with pytest.raises(UnreadableRow, match="not a legacy amount: '12.5'") as amount:
        acl.translate_order(change("update", legacy_row(sts="NW"), legacy_row(amt="12.5")))
    assert amount.value.column == "amt"


def test_the_acl_drops_a_market_that_is_cut_over_to_the_new_context() -> None:
    acl = LegacyAcl()
    acl.note_routing(change("insert", None, {"market": "DE", "producer": "ordering"}, table="public.fulfilment_market_routing"))
    dropped = acl.translate_order(change("update", legacy_row(sts="NW"), legacy_row()))
    assert isinstance(dropped, Drop) and "new Ordering context" in dropped.reason
    acl.note_routing(change("update", None, {"market": "DE", "producer": "both"}, table="public.fulfilment_market_routing"))
    assert isinstance(acl.translate_order(change("update", legacy_row(sts="NW"), legacy_row())), Publish)


async def dual_write(system: Fulfilment, order_id: str, market: str) -> None:
    """The storefront during the migration: the legacy OMS, then the new Ordering context."""
    await system.legacy.enter(order_id, market, "W", "10,00", "SKU-1", 1)
    await system.legacy.release(order_id)
    context = MessageContext(correlation_id=order_correlation(order_id), tenant=TENANT)
    await system.ordering.handle(
        PlaceOrder(order_id=order_id, market=market, channel="web", total_cents=1000, currency="EUR", sku="SKU-1", quantity=1),
        context=context,
    )
    await system.ordering.handle(AcceptOrder(order_id=order_id, accepted_at=datetime.now(UTC).isoformat()), context=context)


async def test_a_market_cut_over_legacy_both_ordering_fulfils_every_order_exactly_once(database: str) -> None:
    async with Fulfilment(database) as system:
        await system.switch("AT", "legacy")
        await system.start()
        try:
            # Given AT orders before, during (both) and after the cut-over, every one dual-written
            plan = {"legacy": ["A1", "A2"], "both": ["B1", "B2", "B3"], "ordering": ["C1", "C2"]}
            for producer, orders in plan.items():
                await system.switch("AT", producer)
                for order_id in orders:
                    await dual_write(system, order_id, "AT")
            everything = {o for orders in plan.values() for o in orders}

            # When everything has been delivered and applied
            assert await system.settle(lambda: _awaiting_all(system, everything))
            assert await system.settle(lambda: _duplicates(system, 3))

            # Then each order has exactly one shipment, whoever published it, and how often
            assert await shipments(system) == dict.fromkeys(everything, 1)
            # (under 'both' the new context usually commits first: CDC reads the legacy row a poll later)
            assert {o: sorted(await publications(system, o)) for o in everything} == {
                "A1": ["legacy"], "A2": ["legacy"], "C1": ["ordering"], "C2": ["ordering"],
                **{o: ["legacy", "ordering"] for o in plan["both"]},
            }  # fmt: skip
            # …and the second acceptance of each "both" order is on record as a duplicate by business key
            rows = await system.store.fetch(f"SELECT order_id FROM {DUPLICATES} ORDER BY order_id")
            assert [r[0] for r in rows] == ["B1", "B2", "B3"]
        finally:
            await system.stop()


async def test_a_switch_applies_exactly_between_the_legacy_orders_committed_before_and_after_it(database: str) -> None:
    async with Fulfilment(database) as system:
        # Given, while CDC is not running, a legacy AT order, then the switch to 'ordering', then another
        await system.switch("AT", "legacy")
        for order_id in ("X1",):
            await system.legacy.enter(order_id, "AT", "W", "5,00", "SKU-1", 1)
            await system.legacy.release(order_id)
        await system.switch("AT", "ordering")
        await system.legacy.enter("X2", "AT", "W", "5,00", "SKU-1", 1)
        await system.legacy.release("X2")

        # When CDC catches up (the ACL started with the routing as it is now: 'ordering')
        await system.start()
        try:
            assert await system.settle(lambda: _awaiting_all(system, {"X1"}))
            assert await system.settle(await system.caught_up())
            # Then X1, committed before the switch, came from the legacy OMS; X2, after it, did not
            assert await publications(system, "X1") == ["legacy"]
            assert await publications(system, "X2") == []
        finally:
            await system.stop()


def test_the_contexts_import_only_the_contract_and_the_cutover_module() -> None:
    root = REPO / "examples" / "fulfilment"
    parts = ("legacy", "ordering", "shipping")
    for part in parts:
        for path in (root / part).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("examples."):
                    allowed = (f"examples.fulfilment.{part}", "examples.fulfilment.contracts", "examples.fulfilment.cutover")
                    assert node.module.startswith(allowed), f"{path.relative_to(REPO)} imports {node.module}"


def test_the_demo_observes_every_outcome_and_exits_zero() -> None:
    if not (PG_BIN / "initdb").exists():
        unavailable(f"PostgreSQL's initdb is not installed at {PG_BIN}")
    result = subprocess.run([sys.executable, "-m", "examples.fulfilment", "demo"], cwd=REPO, capture_output=True, text=True, timeout=240)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    failed = [line for line in output.splitlines() if line.startswith("  ✗ ")]
    assert not failed and "outcomes observed" in output, output[-3000:]
    assert "legacy change public.oms_orders:DE-9" in output, output[-3000:]


def test_reconcile_finds_and_repairs_every_injected_discrepancy_and_applies_nothing_twice() -> None:
    # Given the fault harness: a dropped broker message, an inbox row and its effect deleted, a
    # corrupted read-model row, a legacy acceptance the CDC slot was moved past, a duplicated message
    if not (PG_BIN / "initdb").exists():
        unavailable(f"PostgreSQL's initdb is not installed at {PG_BIN}")
    result = subprocess.run([sys.executable, "-m", "faults", "reconcile", "--json"], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.stdout.strip(), result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    # Then each one was found and repaired, nothing was applied twice, nothing else was reported
    assert figures["found"] == figures["injected"] == figures["repaired"], figures
    assert figures["applied_twice"] == 0 and figures["unexpected_findings"] == [] and figures["remaining_findings"] == [], figures
    assert figures["repairs_audited"] == 4, figures  # the duplicate needs none: the inbox absorbed it
    assert result.returncode == 0, result.stderr[-2000:]


def test_cdc_killed_at_random_points_and_a_database_crash_lose_double_and_reorder_nothing() -> None:
    # Given the fault harness: tidings cdc run as a process, SIGKILLed at random points, and an immediate database restart
    if not (PG_BIN / "initdb").exists():
        unavailable(f"PostgreSQL's initdb is not installed at {PG_BIN}")
    argv = [sys.executable, "-m", "faults", "crash-cdc", "--json", "--orders", "40", "--rounds", "4", "--seed", "3"]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.stdout.strip(), result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    # Then per business key every committed release is one event, in release order, and the faults fired
    assert (figures["lost"], figures["phantom"], figures["duplicate_effects"], figures["order_violations"]) == (0, 0, 0, 0), figures
    assert figures["kills"] >= 2 and figures["db_restarts"] == 1 and figures["events"] == figures["releases_committed"], figures
    assert result.returncode == 0, result.stderr[-2000:]


async def test_reconcile_repairs_are_audited_with_their_command_line_and_not_repeated_within_the_cooldown(database: str) -> None:
    async with Fulfilment(database) as system:
        await system.switch("DE", "legacy")
        await system.start()
        try:
            await dual_write(system, "R1", "DE")
            assert await system.settle(lambda: _awaiting_all(system, {"R1"}))
        finally:
            await system.stop()
        corrupt = f"UPDATE {AWAITING_RELEASE} SET sku = 'WRONG' WHERE order_id = 'R1'"
        await system.store.run(corrupt)

    argv = [sys.executable, "-m", "tidings.cli", "reconcile", "-d", database, "--app", "examples.fulfilment.reconciling:reconciler",
            "--grace", "0"]  # fmt: skip
    # When reconcile only reports, it changes nothing and exits 1
    report = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert report.returncode == 1 and "read_model_differs" in report.stdout and "sku 'WRONG' ≠ 'SKU-1'" in report.stdout, report.stdout + report.stderr
    # When it repairs, the row is rewritten and the repair is audited with the command line
    repaired = subprocess.run([*argv, "--repair", "--json"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    outcome = json.loads(repaired.stdout)["repairs"]
    assert [r["outcome"][:5] for r in outcome] == ["done:"], outcome
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        assert (await (await conn.execute(f"SELECT sku FROM {AWAITING_RELEASE} WHERE order_id = 'R1'")).fetchone()) == ("SKU-1",)
        [(command_line, action, audited)] = await (await conn.execute("SELECT command_line, action, outcome FROM tidings_reconcile_audit")).fetchall()
        assert "--repair" in command_line and action == "rewrite row" and audited.startswith("done"), (command_line, action, audited)
        # When the same row breaks again at once, the repair is refused by the cooldown (audited too)
        await conn.execute(corrupt)
    again = subprocess.run([*argv, "--repair", "--json"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "cooldown" in json.loads(again.stdout)["repairs"][0]["outcome"], again.stdout + again.stderr


async def _awaiting_all(system: Fulfilment, orders: set[str]) -> bool:
    return orders <= await awaiting(system)


async def _duplicates(system: Fulfilment, n: int) -> bool:
    return int((await system.store.fetch(f"SELECT count(*) FROM {DUPLICATES}"))[0][0]) >= n
