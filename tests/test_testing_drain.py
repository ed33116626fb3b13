"""The test kit's drain (relay and consumers until nothing is pending) and the public snapshot reader."""

from __future__ import annotations

import pytest

from model import (
    Counter,
    Increment,
    License,
    LicensePurchaseConfirmed,
    OfferLicense,
    OverageBilled,
    PurchaseLicense,
    ReportUsage,
    SnapshottedCounter,
    make_app,
)
from tidings.brokers.local import LocalBroker
from tidings.messaging import new_id
from tidings.runtime import Consumer, HandlerContext
from tidings.store import Store
from tidings.testing import drain


async def test_drain_runs_relay_and_consumers_until_what_they_caused_is_consumed_too(store: Store) -> None:
    # Given a consumer that reports usage over the allowance for each purchase (which bills an
    # overage, published on "billing"), and a second consumer of "billing"
    app = make_app(store)
    broker = LocalBroker(store)
    usage = Consumer("usage", store, broker, topics=["licensing"])
    billing = Consumer("billing", store, broker, topics=["billing"])
    billed: list[OverageBilled] = []

    @usage.handler(LicensePurchaseConfirmed)
    async def use_too_much(event: LicensePurchaseConfirmed, ctx: HandlerContext) -> None:
        await ctx.handle(app, ReportUsage(license_id=event.license_id, units=15))

    @billing.handler(OverageBilled)
    async def bill(event: OverageBilled, ctx: HandlerContext) -> None:
        billed.append(event)

    license_id = new_id()
    await app.handle(OfferLicense(license_id=license_id, product="Editor", allowance=10))
    await app.handle(PurchaseLicense(license_id=license_id, buyer="ada"))

    # When the test drains
    rounds = await drain(store, broker, [usage, billing], timeout=20)

    # Then the second-hand publication was consumed too, and nothing is left
    assert billed == [OverageBilled(license_id=license_id, units=5)]
    # (one round or two: the relay may already claim the overage while it drains the purchase)
    assert rounds in (1, 2)
    assert (usage.stats.applied, billing.stats.applied) == (1, 1)
    assert not [row for row in await store.read_outbox() if row.delivered_at is None]


async def test_drain_refuses_a_broker_whose_lag_it_cannot_see(store: Store) -> None:
    with pytest.raises(TypeError, match="LocalBroker"):
        await drain(store, object(), [])  # type: ignore[arg-type]


async def test_the_latest_snapshot_can_be_read_without_the_events_after_it(store: Store) -> None:
    # Given a counter with a snapshot every 3 versions, incremented four times, and one without snapshots
    app = make_app(store, counter=SnapshottedCounter)
    counter_id = new_id()
    for by in (1, 2, 3, 4):
        await app.handle(Increment(counter_id=counter_id, by=by))
    # When its snapshot is read / then it is the counter at version 3, before the fourth increment
    snapshot = await app.snapshot(SnapshottedCounter, counter_id)
    assert snapshot is not None and (snapshot.version, snapshot.value, snapshot.steps) == (3, 6, [1, 2, 3])
    # And a counter without snapshots has none; a state-stored aggregate is refused with the reason
    plain = make_app(store)
    other = new_id()
    await plain.handle(Increment(counter_id=other, by=1))
    assert await plain.snapshot(Counter, other) is None
    with pytest.raises(TypeError, match="state-stored"):
        await plain.snapshot(License, new_id())
