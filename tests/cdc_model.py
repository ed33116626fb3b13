"""The legacy order table and the anti-corruption translator the CDC tests (and their CLI processes) use."""

from __future__ import annotations

from typing import Any

from tidings.cdc import ChangeCapture, Drop, RowChange, UnreadableRow
from tidings.messaging import IntegrationEvent


class OrderAccepted(IntegrationEvent, name="ordering.OrderAcceptedForFulfillment", version=1):
    order_id: str
    amount_cents: int


LEGACY_DDL = (
    "CREATE TABLE legacy_orders (id TEXT PRIMARY KEY, status CHAR(1) NOT NULL, amount TEXT NOT NULL, note TEXT)",
    "ALTER TABLE legacy_orders REPLICA IDENTITY FULL",
    "CREATE TABLE legacy_audit (id SERIAL PRIMARY KEY, line TEXT)",
)


def make_capture() -> ChangeCapture:
    """The ACL of the tests: status P→A is an acceptance; any other change is no business fact."""
    capture = ChangeCapture("ordering")

    @capture.translator("legacy_orders")
    def accepted(change: RowChange) -> Any:
        new = change.new or {}
        if new.get("status") not in {"P", "A", "X"}:
            raise UnreadableRow("status", f"unknown legacy status code {new.get('status')!r}")
        old = change.old or {}
        if change.operation == "update" and old.get("status") == "P" and new.get("status") == "A":
            try:
                cents = round(float(str(new["amount"])) * 100)
            except ValueError:
                raise UnreadableRow("amount", f"not a number: {new['amount']!r}") from None
            return OrderAccepted(order_id=str(new["id"]), amount_cents=cents)
        return Drop(f"{change.operation} with status {new.get('status')} is no business fact")

    return capture
