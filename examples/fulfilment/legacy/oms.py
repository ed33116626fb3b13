"""The legacy OMS as it is: plain SQL tables and the monolith's writer, with its own codes, amounts as text and local times.

``oms_orders`` is what the monolith has written for fifteen years:

    ord_no     TEXT        the order number
    mkt        TEXT        market (country code)
    chan       CHAR(1)     W = web, S = store, T = telephone
    sts        CHAR(2)     NW = new, HD = on hold, OK = released to fulfilment, CX = cancelled
    amt        TEXT        the total as the till printed it, German style: '1.234,50'
    cur        TEXT        currency
    sku, qty               the one line the legacy screen allows
    upd_local  TIMESTAMP   last change, in Europe/Berlin wall-clock time, no zone

Nothing here knows about events: the monolith only writes rows. Change data capture and the ACL
(:mod:`examples.fulfilment.legacy.acl`) turn them into our contract.
"""

from __future__ import annotations

import psycopg

__all__ = ["LEGACY_DDL", "LegacyOms"]

LEGACY_DDL = (
    "CREATE TABLE IF NOT EXISTS oms_orders (ord_no TEXT PRIMARY KEY, mkt TEXT NOT NULL, chan CHAR(1) NOT NULL, "
    "sts CHAR(2) NOT NULL, amt TEXT NOT NULL, cur TEXT NOT NULL, sku TEXT NOT NULL, qty INTEGER NOT NULL, "
    "upd_local TIMESTAMP NOT NULL)",
    # CDC needs every column of the old row (docs/decisions/0021).
    "ALTER TABLE oms_orders REPLICA IDENTITY FULL",
)

_NOW_LOCAL = "(now() AT TIME ZONE 'Europe/Berlin')"


class LegacyOms:
    """The monolith's order screens: each call is one transaction, the way the legacy code commits."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def _run(self, sql: str, params: tuple[object, ...]) -> None:
        async with await psycopg.AsyncConnection.connect(self.url) as conn:
            async with conn.transaction():
                await conn.execute(sql, params)

    async def enter(self, ord_no: str, market: str, channel: str, amount: str, sku: str, qty: int, currency: str = "EUR") -> None:
        """A clerk enters an order (status NW); ``amount`` is typed as text, the legacy way."""
        await self._run(
            f"INSERT INTO oms_orders VALUES (%s, %s, %s, 'NW', %s, %s, %s, %s, {_NOW_LOCAL})",
            (ord_no, market, channel, amount, currency, sku, qty),
        )

    async def release(self, ord_no: str) -> None:
        """The order passes the credit check and is released to fulfilment (NW/HD → OK)."""
        await self._run(f"UPDATE oms_orders SET sts = 'OK', upd_local = {_NOW_LOCAL} WHERE ord_no = %s", (ord_no,))

    async def set_status(self, ord_no: str, code: str) -> None:
        """Any status code the monolith's screens can type, valid or not (the legacy database checks nothing)."""
        await self._run(f"UPDATE oms_orders SET sts = %s, upd_local = {_NOW_LOCAL} WHERE ord_no = %s", (code, ord_no))
