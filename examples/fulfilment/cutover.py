"""Strangler cut-over: which system produces ``OrderAcceptedForFulfillment`` for a market, switchable at runtime.

One row per market in ``fulfilment_market_routing`` (in the legacy database, so the switch travels
through the same WAL as the legacy orders and the ACL sees it exactly between the orders committed
before and after it). ``producer`` is:

    legacy     the legacy OMS through CDC + ACL publishes; the new Ordering context only shadows
    both       both publish; Shipping fulfils once per order (de-duplication by business key)
    ordering   the new Ordering context publishes; the ACL drops the legacy rows of that market

A market moves legacy → both → ordering: ``both`` covers the orders one system has seen and the
other not yet (dual writes are never simultaneous), so no order is published by neither system.
A market with no row is ``legacy``. See docs/decisions/0023-strangler-cut-over.md.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PRODUCERS", "ROUTING_DDL", "ROUTING_TABLE", "publishes", "switch"]

ROUTING_TABLE = "fulfilment_market_routing"
PRODUCERS = ("legacy", "both", "ordering")
ROUTING_DDL = (
    f"CREATE TABLE IF NOT EXISTS {ROUTING_TABLE} (market TEXT PRIMARY KEY, "
    "producer TEXT NOT NULL CHECK (producer IN ('legacy', 'both', 'ordering')), changed_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    f"ALTER TABLE {ROUTING_TABLE} REPLICA IDENTITY FULL",
)


def publishes(producer: str | None, system: str) -> bool:
    """Whether ``system`` ("legacy" or "ordering") publishes the contract under ``producer`` (None: no row, legacy)."""
    chosen = producer or "legacy"
    return chosen == "both" or chosen == system


async def switch(conn: Any, market: str, producer: str) -> None:
    """Set the producer of ``market`` (a psycopg connection to the legacy database, autocommit or in a transaction)."""
    if producer not in PRODUCERS:
        raise ValueError(f"producer must be one of {', '.join(PRODUCERS)}, got {producer!r}")
    await conn.execute(
        f"INSERT INTO {ROUTING_TABLE} (market, producer) VALUES (%s, %s) "
        "ON CONFLICT (market) DO UPDATE SET producer = excluded.producer, changed_at = now()",
        (market, producer),
    )
