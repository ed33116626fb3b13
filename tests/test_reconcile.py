"""``tidings.runtime.reconcile`` on both stores: what the toolkit's own checks find, and how republishing keeps per-key order.

The whole flow (source, broker, read model, the fault harness) is tested with the retailer in
tests/test_fulfilment.py.
"""

from __future__ import annotations

from tidings.app.outgoing import outbox_entry
from tidings.messaging import IntegrationEvent, MessageContext
from tidings.messaging.envelope import utc_now
from tidings.runtime.reconcile import AUDIT_TABLE, DeliveryCheck, Reconciler
from tidings.store import Store
from tidings.store.records import Changes


class ParcelScanned(IntegrationEvent, name="test.ParcelScanned", version=1):
    parcel_id: str
    n: int


async def publish(store: Store, *items: tuple[str, int]) -> list[str]:
    """Outbox rows (delivered) for (key, n) items, in this order; their event ids."""
    entries = [outbox_entry(ParcelScanned(parcel_id=key, n=n), topic="parcels", key=key, source="test", context=MessageContext())[1]
               for key, n in items]  # fmt: skip
    async with store.transaction() as tx:
        await tx.commit(Changes(outbox=entries))
    await store.run("UPDATE tidings_outbox SET delivered_at = ?", (utc_now(),))
    return [entry.event_id for entry in entries]


async def test_a_missed_message_is_republished_with_every_later_message_of_its_key_in_outbox_order(store: Store) -> None:
    # Given three delivered messages of parcel p1 and one of p2, and a consumer that applied all but p1's second
    ids = await publish(store, ("p1", 1), ("p1", 2), ("p1", 3), ("p2", 1))
    for event_id in (ids[0], ids[2], ids[3]):
        await store.run("INSERT INTO tidings_inbox (consumer, event_id) VALUES (?, ?)", ("tracking", event_id))
    reconciler = Reconciler(store, [DeliveryCheck({"tracking": ["parcels"]}, grace=0)])

    # When reconcile looks
    report = await reconciler.find()

    # Then it names exactly the missed message, and the repair it offers is a republish
    assert [(f.kind, f.key, f.event_id, f.repair) for f in report.findings] == [("not_applied", "p1", ids[1], "republish")]

    # When it repairs
    await reconciler.repair(report, command_line="pytest", per_second=0)

    # Then p1's second AND third go out again (the inbox skips the third), in outbox order; p1's first and p2 stay delivered
    rows = await store.fetch("SELECT partition_key, delivered_at IS NULL, replays FROM tidings_outbox ORDER BY id")
    assert [(k, bool(pending), int(r)) for k, pending, r in rows] == [("p1", False, 0), ("p1", True, 1), ("p1", True, 1), ("p2", False, 0)]
    audited = await store.fetch(f"SELECT command_line, action, partition_key, outcome FROM {AUDIT_TABLE}")
    assert [(c, a, k) for c, a, k, _ in audited] == [("pytest", "republish", "p1")] and audited[0][3].startswith("done")


async def test_a_message_younger_than_the_grace_is_in_flight_not_missing(store: Store) -> None:
    await publish(store, ("p1", 1))
    assert (await Reconciler(store, [DeliveryCheck({"tracking": ["parcels"]}, grace=60)]).find()).findings == []


async def test_repairs_stop_at_the_limit_and_say_so(store: Store) -> None:
    await publish(store, ("p1", 1), ("p2", 1), ("p3", 1))
    reconciler = Reconciler(store, [DeliveryCheck({"tracking": ["parcels"]}, grace=0)])
    report = await reconciler.repair(await reconciler.find(), command_line="pytest", limit=2, per_second=0)
    assert [r.outcome.split(":")[0] for r in report.repairs] == ["done", "done", "skipped"]
    assert "limit of 2" in report.repairs[2].outcome
