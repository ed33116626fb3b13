"""Reconciliation of the fulfilment flow: ``tidings reconcile --app examples.fulfilment.reconciling:reconciler``.

Per order (the business key, also the partition key and ``order:<id>`` correlation):

    source → outbox        :class:`AcceptedOrdersCheck` — an order accepted in the legacy OMS
                           (``sts = 'OK'``) or in Ordering with no contract in the outbox and no
                           dead letter of the ACL: a change that produced no event (a skipped
                           dual write, a CDC position moved past it). Repair: emit the contract
                           from the source row, with an event id derived from the order (so a
                           second repair is refused by the outbox's unique event id).
    outbox → Shipping      :class:`tidings.runtime.reconcile.DeliveryCheck` — delivered but not
                           applied; parked rows; dead letters. Repair: republish in per-key order.
    broker copies          :class:`tidings.runtime.reconcile.BrokerCopiesCheck` (local broker).
    Shipping → read model  :class:`AwaitingReleaseCheck` — every open shipment has its row in
                           ``shipping_awaiting_release`` with the shipment's values, and no other
                           row is there. Repair: rewrite the row from the shipment's events.

Like ``platform.py`` this module knows every part (it is the operator's view across them).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from examples.fulfilment.contracts import ORDER_ACCEPTED_TOPIC, TENANT, OrderAcceptedForFulfillment, order_correlation
from examples.fulfilment.legacy.acl import LEGACY_TABLE, LegacyAcl
from examples.fulfilment.platform import SLOT
from examples.fulfilment.shipping.application import AWAITING_RELEASE, CONSUMER
from tidings.app.outgoing import outbox_entry
from tidings.cdc import Publish, RowChange
from tidings.messaging import MessageContext
from tidings.runtime.reconcile import BrokerCopiesCheck, DeliveryCheck, Finding, Reconciler
from tidings.store import Store
from tidings.store.records import Changes

__all__ = ["AcceptedOrdersCheck", "AwaitingReleaseCheck", "reconciler"]

_REPAIR_NAMESPACE = uuid.UUID("0b7e3a51-9c24-5d6f-8e1a-2f4c6d8b0a13")


def reconciler(store: Store, *, grace: float = 30.0) -> Reconciler:
    """Every check of the fulfilment flow on ``store`` (changes younger than ``grace`` s may still be in flight)."""
    return Reconciler(
        store,
        [
            AcceptedOrdersCheck(grace=grace),
            DeliveryCheck({CONSUMER: [ORDER_ACCEPTED_TOPIC]}, grace=grace),
            BrokerCopiesCheck(),
            AwaitingReleaseCheck(),
        ],
    )


class AcceptedOrdersCheck:
    """Source of truth → outbox: every accepted order has its contract in the outbox (or an ACL dead letter saying why not)."""

    name = "source"

    def __init__(self, grace: float = 30.0) -> None:
        self.grace = grace

    async def find(self, store: Store) -> list[Finding]:
        cutoff = datetime.now(UTC) - timedelta(seconds=self.grace)
        legacy = await store.fetch(
            f"SELECT ord_no FROM {LEGACY_TABLE} WHERE sts = 'OK' AND (upd_local AT TIME ZONE 'Europe/Berlin') < ?", (cutoff,)
        )
        ordering = await store.fetch(
            "SELECT envelope->>'aggregate_id' FROM tidings_journal WHERE event_type LIKE ? AND occurred_at < ?", ("%OrderAccepted", cutoff)
        )
        published = {str(r[0]) for r in await store.fetch("SELECT DISTINCT partition_key FROM tidings_outbox WHERE topic = ?", (ORDER_ACCEPTED_TOPIC,))}
        explained = {str(r[0]) for r in await store.fetch("SELECT DISTINCT partition_key FROM tidings_dead_letters WHERE consumer = ?", (f"cdc:{SLOT}",))}
        findings = []
        sources: dict[str, str] = {}
        for (order_id,) in legacy:
            sources.setdefault(str(order_id), "legacy OMS")
        for (order_id,) in ordering:
            sources.setdefault(str(order_id), "Ordering")
        for order_id, source in sorted(sources.items()):
            if order_id in published or order_id in explained:
                continue
            findings.append(Finding(
                self.name, "missing_event", order_id, f"{source} → outbox",
                f"order {order_id} was accepted in the {source} but no {OrderAcceptedForFulfillment.message_name} was ever written",
                None, order_correlation(order_id), "emit from source", source,
            ))  # fmt: skip
        return findings

    async def repair(self, store: Store, finding: Finding) -> str:
        event = await self._from_legacy(store, finding.key) if finding.ref == "legacy OMS" else await self._from_ordering(store, finding.key)
        event_id = str(uuid.uuid5(_REPAIR_NAMESPACE, f"{ORDER_ACCEPTED_TOPIC}|{finding.key}"))
        _, entry = outbox_entry(
            event,
            topic=ORDER_ACCEPTED_TOPIC,
            key=finding.key,
            source="ordering",
            context=MessageContext(correlation_id=order_correlation(finding.key), causation_id=f"reconcile:{finding.key}", tenant=TENANT),
            event_id=event_id,
        )
        async with store.transaction() as tx:
            await tx.commit(Changes(outbox=[entry]))
        return f"emitted {event.message_name} {event_id} for order {finding.key} from the {finding.ref}"

    async def _from_legacy(self, store: Store, order_id: str) -> OrderAcceptedForFulfillment:
        rows = await store.fetch(f"SELECT ord_no, mkt, chan, sts, amt, cur, sku, qty, upd_local FROM {LEGACY_TABLE} WHERE ord_no = ?", (order_id,))
        if not rows:
            raise LookupError(f"legacy order {order_id} is gone from {LEGACY_TABLE}")
        columns = ("ord_no", "mkt", "chan", "sts", "amt", "cur", "sku", "qty", "upd_local")
        row = {c: str(v) for c, v in zip(columns, rows[0], strict=True)}
        # The ACL reads the row as CDC would deliver it, under the legacy routing: the repair re-creates
        # what the capture should have written, with the same translation rules.
        change = RowChange(f"public.{LEGACY_TABLE}", "insert", None, row, order_id, 0, 0, datetime.now(UTC), 0)
        published = LegacyAcl().translate_order(change)
        if not isinstance(published, Publish):
            raise ValueError(f"the ACL does not read order {order_id} as an acceptance: {published}")
        return published.event  # type: ignore[return-value]

    async def _from_ordering(self, store: Store, order_id: str) -> OrderAcceptedForFulfillment:
        rows = await store.fetch("SELECT state FROM tidings_aggregate_state WHERE aggregate_id = ? AND aggregate_type LIKE ?", (order_id, "%Order"))
        if not rows:
            raise LookupError(f"Ordering has no order {order_id}")
        state = rows[0][0] if isinstance(rows[0][0], dict) else json.loads(rows[0][0])
        return OrderAcceptedForFulfillment(
            order_id=order_id, channel=state["channel"], market=state["market"], total_cents=state["total_cents"],
            currency=state["currency"], accepted_at=state["accepted_at"], sku=state["sku"], quantity=state["quantity"],
        )  # fmt: skip


class AwaitingReleaseCheck:
    """Shipping → its read model: one row per open shipment, equal to the shipment; no row without one."""

    name = "awaiting-release"

    async def find(self, store: Store) -> list[Finding]:
        expected = await _open_shipments(store)
        actual = {
            str(order_id): {"market": market, "sku": sku, "quantity": int(quantity)}
            for order_id, market, sku, quantity in await store.fetch(f"SELECT order_id, market, sku, quantity FROM {AWAITING_RELEASE}")
        }
        findings = []
        for order_id, values in sorted(expected.items()):
            row = actual.get(order_id)
            want = {k: values[k] for k in ("market", "sku", "quantity")}
            if row is None:
                detail = "the shipment is open but its row is missing"
            elif row != want:
                detail = "row differs from the shipment: " + ", ".join(f"{k} {row[k]!r} ≠ {want[k]!r}" for k in want if row[k] != want[k])
            else:
                continue
            findings.append(Finding(self.name, "read_model_differs", order_id, f"shipping → {AWAITING_RELEASE}", detail,
                                    None, order_correlation(order_id), "rewrite row", values))  # fmt: skip
        for order_id in sorted(set(actual) - set(expected)):
            findings.append(Finding(self.name, "read_model_differs", order_id, f"shipping → {AWAITING_RELEASE}",
                                    "a row for an order with no open shipment", None, order_correlation(order_id), "rewrite row", None))  # fmt: skip
        return findings

    async def repair(self, store: Store, finding: Finding) -> str:
        async with store.transaction() as tx:
            await tx.run(f"DELETE FROM {AWAITING_RELEASE} WHERE order_id = ?", (finding.key,))
            if finding.ref is not None:
                v = finding.ref
                await tx.run(
                    f"INSERT INTO {AWAITING_RELEASE} (order_id, market, sku, quantity, since) VALUES (?, ?, ?, ?, ?)",
                    (finding.key, v["market"], v["sku"], v["quantity"], v["since"]),
                )
        return f"row of {finding.key} rewritten from its shipment" if finding.ref is not None else f"stray row of {finding.key} removed"


async def _open_shipments(store: Store) -> dict[str, dict[str, Any]]:
    """Order id → the values of its open shipment, from Shipping's journal (opened, not released)."""
    rows = await store.fetch(
        "SELECT envelope->>'aggregate_id', event_type, payload::text, occurred_at FROM tidings_journal "
        "WHERE event_type LIKE ? OR event_type LIKE ? ORDER BY position",
        ("%ShipmentOpened", "%ShipmentReleased"),
    )
    shipments: dict[str, dict[str, Any]] = {}
    for order_id, event_type, payload, occurred_at in rows:
        if str(event_type).endswith("ShipmentReleased"):
            shipments.pop(str(order_id), None)
            continue
        data = json.loads(payload)
        shipments[str(order_id)] = {"market": data["market"], "sku": data["sku"], "quantity": int(data["quantity"]),
                                    "since": occurred_at.isoformat()}  # fmt: skip
    return shipments
