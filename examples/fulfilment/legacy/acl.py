"""The anti-corruption layer over the legacy OMS: ``oms_orders`` row changes → ``OrderAcceptedForFulfillment`` v1.

Legacy meaning is translated here and nowhere else: ``sts`` NW/HD → OK is an acceptance; channel
codes become words; the German-style text amount becomes cents; the Berlin wall-clock time becomes
UTC. A status code or amount the ACL cannot read is an :class:`UnreadableRow` (dead-lettered with
the column, by the CDC runner); any other change is dropped with its reason.

The market routing (:mod:`examples.fulfilment.cutover`) is captured through the same slot: its row
changes update the ACL's view in WAL order, so an order committed after a switch is translated
under the new producer, one committed before it under the old. ``LegacyAcl.load`` reads the table
once at start (changes at or below the CDC checkpoint are not read again).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from examples.fulfilment.contracts import ORDER_ACCEPTED_TOPIC, TENANT, OrderAcceptedForFulfillment, order_correlation
from examples.fulfilment.cutover import ROUTING_TABLE, publishes
from tidings.cdc import ChangeCapture, Drop, Publish, RowChange, UnreadableRow

__all__ = ["LEGACY_TABLE", "LegacyAcl", "capture"]

LEGACY_TABLE = "oms_orders"
_CHANNELS = {"W": "web", "S": "store", "T": "phone"}
_STATUSES = {"NW", "HD", "OK", "CX"}
_AMOUNT = re.compile(r"^\d{1,3}(\.\d{3})*,\d{2}$|^\d+,\d{2}$|^\d+$")
_BERLIN = ZoneInfo("Europe/Berlin")


class LegacyAcl:
    """The ACL's translators and its view of the market routing; ``capture`` is what the CDC runner takes."""

    def __init__(self) -> None:
        self.routing: dict[str, str] = {}
        self.capture = ChangeCapture("ordering", tenant=TENANT, correlation=self._correlation)
        self.capture.translator(LEGACY_TABLE)(self.translate_order)
        self.capture.translator(ROUTING_TABLE)(self.note_routing)

    @staticmethod
    def _correlation(change: RowChange) -> str:
        return order_correlation(change.key) if change.table == f"public.{LEGACY_TABLE}" else f"routing:{change.key}"

    async def load(self, conn: Any) -> None:
        """Read the current routing (a psycopg connection to the legacy database)."""
        cur = await conn.execute(f"SELECT market, producer FROM {ROUTING_TABLE}")
        self.routing = {market: producer for market, producer in await cur.fetchall()}

    def note_routing(self, change: RowChange) -> Drop:
        """A routing change is no business fact: remember it for the orders that follow it in the WAL."""
        row = change.row
        if change.operation == "delete":
            self.routing.pop(str(row.get("market")), None)
        else:
            self.routing[str(row["market"])] = str(row["producer"])
        return Drop(f"market routing {row.get('market')} → {row.get('producer') if change.operation != 'delete' else 'legacy'}")

    def translate_order(self, change: RowChange) -> Publish | Drop:
        """One ``oms_orders`` change: an acceptance becomes the contract; anything else is dropped with its reason."""
        new, old = change.new or {}, change.old or {}
        status = new.get("sts") if change.operation != "delete" else old.get("sts")
        if status not in _STATUSES:
            raise UnreadableRow("sts", f"unknown legacy status code {status!r} (known: {', '.join(sorted(_STATUSES))})")
        if change.operation == "delete":
            return Drop("a deleted legacy order is no business fact (archiving)")
        accepted = status == "OK" and (change.operation == "insert" or old.get("sts") != "OK")
        if not accepted:
            return Drop(f"{change.operation} with sts {old.get('sts', '-')}→{status} is no acceptance")
        market = str(new["mkt"])
        if not publishes(self.routing.get(market), "legacy"):
            return Drop(f"market {market} is produced by the new Ordering context ({self.routing.get(market)})")
        event = OrderAcceptedForFulfillment(
            order_id=str(new["ord_no"]),
            channel=_channel(new.get("chan")),
            market=market,
            total_cents=_cents(new.get("amt")),
            currency=str(new["cur"]),
            accepted_at=_utc(new.get("upd_local")),
            sku=str(new["sku"]),
            quantity=int(str(new["qty"])),
        )
        return Publish(event, key=event.order_id, topic=ORDER_ACCEPTED_TOPIC)


def _channel(code: object) -> str:
    try:
        return _CHANNELS[str(code).strip()]
    except KeyError:
        raise UnreadableRow("chan", f"unknown channel code {code!r} (known: {', '.join(_CHANNELS)})") from None


def _cents(text: object) -> int:
    """'1.234,50' → 123450; the legacy till's only format."""
    value = str(text).strip()
    if not _AMOUNT.match(value):
        raise UnreadableRow("amt", f"not a legacy amount: {text!r} (expected like '1.234,50')")
    units, _, cents = value.replace(".", "").partition(",")
    return int(units) * 100 + int(cents or 0)


def _utc(local: object) -> str:
    """A Berlin wall-clock timestamp as the legacy database keeps it → UTC ISO 8601."""
    try:
        moment = datetime.fromisoformat(str(local)).replace(tzinfo=_BERLIN)
    except ValueError:
        raise UnreadableRow("upd_local", f"not a timestamp: {local!r}") from None
    return moment.astimezone(ZoneInfo("UTC")).isoformat()


def capture() -> ChangeCapture:
    """The ACL for ``tidings cdc run --app examples.fulfilment.legacy.acl:capture`` (no routing rows: every market is legacy).

    A process started this way reads only routing changes that commit after it starts; the demo's
    platform loads the table first (:meth:`LegacyAcl.load`).
    """
    return LegacyAcl().capture
