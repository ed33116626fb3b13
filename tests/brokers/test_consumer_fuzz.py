"""Standing fuzzing of consumers (short form): garbage straight onto every broker, on SQLite and PostgreSQL.

Random bytes, truncated JSON, wrong types, missing and oversized ``tidings-*`` headers, one type
with another's payload, oversized, unprintable and NUL event ids, NUL keys and headers, reused ids
with other payloads, valid messages whose effect the handler's table refuses, and spoiled messages drawn by hypothesis (fixed seed) — interleaved on the
same keys with good messages. See faults/fuzz.py for what is counted; ``python -m faults fuzz
--long`` runs thousands.
"""

from __future__ import annotations

import sys
from pathlib import Path

from broker_server import BrokerServer
from support import StoreFactory

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from faults.fuzz import KINDS, run_once  # noqa: E402  (the harness lives beside tests/, not in src/)


async def test_garbage_on_the_broker_is_dead_lettered_with_reasons_and_good_messages_are_applied_once_in_order(
    broker_server: BrokerServer, store_factory: StoreFactory
) -> None:
    # Given a consumer on the store reading the broker
    store = await store_factory()

    # When good messages and bad ones of every kind are published interleaved on the same keys
    figures = await run_once(store, broker_server.broker, broker_name=broker_server.name, seed=15)

    # Then every good message was applied once, in order; every bad one dead-lettered with its reason
    # (or refused by the broker itself); nothing crashed, looped or vanished
    report = figures.as_dict()
    assert figures.clean, report
    assert figures.applied == figures.good - sum(figures.refused_at_publish[k] for k in ("good", "foreign-id")), report
    assert set(figures.sent) >= set(KINDS), report
    accepted = {kind: figures.sent[kind] - figures.refused_at_publish[kind] for kind in KINDS}
    assert {kind: figures.dead_lettered[kind] for kind in KINDS} == accepted, report
    # ...and each refused effect cost its batch's transaction and two of its own, no more
    assert 0 < figures.rollbacks <= 3 * accepted["refused-effect"], report
