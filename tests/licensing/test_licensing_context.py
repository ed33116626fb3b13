"""Licensing, in process on real stores and the local broker: the ACL, commands, contracts, usage by day, the HTTP routes.

Contracts from other contexts arrive the way they would in production: written to the outbox as
their producer would (``outgoing.outbox_entry``), published by the relay on the local broker (the
store's own durable log), and applied by the context's consumer. Nothing is mocked; the only thing
turned by hand is the clock that stamps envelopes, to spread events over several days.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from fastapi import FastAPI

from examples.licensing.contracts import (
    ASSET_READY_FOR_SEARCH_TOPIC,
    LICENSE_PURCHASE_CONFIRMED_TOPIC,
    LICENSE_USAGE_REPORTED_TOPIC,
    USAGE_VIOLATION_DETECTED_TOPIC,
    V1_CURRENCY,
    AssetReadyForSearch,
    LicensePurchaseConfirmed,
    LicensePurchaseConfirmedV1,
    LicenseUsageReported,
    UsageViolationDetected,
    contract_registry,
)
from examples.licensing.kernel import ContextParts, Settings
from examples.licensing.licensing.domain import (
    LicensableAsset,
    License,
    OfferLicense,
    PurchaseLicense,
    RegisterLicensableAsset,
    ReportUsage,
    license_id_for,
)
from examples.licensing.licensing.infrastructure.asset_consumer import ASSET_ACL_CONSUMER
from examples.licensing.licensing.infrastructure.usage_by_day import DayUsage
from examples.licensing.licensing.infrastructure.wiring import build
from tidings.app import outgoing
from tidings.domain.personal import DEFAULT_MASK
from tidings.messaging.personal import subjects_of
from tidings.store.subject_keys import SubjectKeys, forget_subject
from tidings.brokers.base import OutgoingMessage
from tidings.brokers.headers import envelope_to_headers
from tidings.brokers.local import LocalBroker
from tidings.domain import AggregateNotFound, DomainError, ValidationError
from tidings.messaging import Envelope, IntegrationEvent, new_id, partition_of, utc_now
from tidings.runtime import Consumer, DeadLetters, HandlerContext, Projector, Relay
from tidings.store import Changes, Store, open_store

OWNER = "ada"
BUYER = "bob"
FAST = Settings(immediate_retries=0, delayed_retries=1, retry_base=0.01)


# -- helpers -------------------------------------------------------------------------------------


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    """A migrated SQLite store in a fresh file."""
    store = await open_store(f"sqlite:///{tmp_path / 'licensing.db'}")
    yield store
    await store.close()


def ready(asset_id: str, *, owner_id: str = OWNER, title: str = "Harbour at dawn") -> AssetReadyForSearch:
    """Asset Processing's contract for a searchable asset."""
    return AssetReadyForSearch(
        asset_id=asset_id, owner_id=owner_id, title=title, media_type="image/jpeg",
        size_bytes=2_400_000, width=6000, height=4000, format="jpeg",
    )  # fmt: skip


async def publish_as_producer(store: Store, event: IntegrationEvent, *, key: str, source: str) -> Envelope:
    """Write ``event`` to the outbox as its producing context would (its own transaction)."""
    keys = SubjectKeys(store)  # personal fields (buyer ids) are sealed, as a tidings producer does
    await keys.prepare_subjects(subjects_of(event, event.message_name), event.message_name)
    envelope, entry = outgoing.outbox_entry(event, topic=event.topic, key=key, source=source, keys=keys)  # type: ignore[attr-defined]
    await store.commit(Changes(outbox=[entry]))
    return envelope


async def publish_raw(broker: LocalBroker, *, key: str, event_type: str, payload: bytes, version: int = 1) -> str:
    """Put a message straight on the asset topic, bypassing every check a tidings producer makes (a foreign publisher)."""
    envelope = Envelope(
        event_id=new_id(), event_type=event_type, schema_version=version, occurred_at=utc_now(),
        correlation_id=new_id(), source="somebody-else",
    )  # fmt: skip
    message = OutgoingMessage(
        topic=ASSET_READY_FOR_SEARCH_TOPIC, key=key, partition=partition_of(key), event_id=envelope.event_id,
        headers=envelope_to_headers(msgspec.json.encode(envelope)), payload=payload,
    )  # fmt: skip
    assert await broker.publish([message]) == [None]
    return envelope.event_id


async def until(check: Callable[[], bool], what: str, task: asyncio.Task[None], timeout: float = 20.0) -> None:
    """Wait until ``check()`` holds; fail with ``what`` on timeout, or at once if the consumer crashed."""
    deadline = time.monotonic() + timeout
    while not check():
        if task.done():
            task.result()
            pytest.fail(f"the consumer stopped before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting until {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(consumer: Consumer) -> AsyncIterator[asyncio.Task[None]]:
    """The consumer running in a task of this test; stopped (and checked for a crash) on exit."""
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(consumer.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def outbox(store: Store, topic: str) -> list[tuple[str, Envelope, Any]]:
    """(partition key, envelope, decoded current-version event) of every outbox row on ``topic``, oldest first."""
    registry = contract_registry()
    rows = []
    stored = await store.read_outbox()
    keys = SubjectKeys(store)  # buyer ids are sealed personal data
    await keys.prepare_payloads(row.payload for row in stored)
    for row in stored:
        if row.topic == topic:
            envelope = msgspec.json.decode(row.envelope, type=Envelope)
            rows.append((row.partition_key, envelope, registry.decode(row.event_type, envelope.schema_version, row.payload, keys)))
    return rows


async def sold_license(parts: ContextParts, asset_id: str = "asset-7", allowed_uses: int = 3) -> str:
    """Register ``asset_id`` (as the ACL would), offer it to BUYER and buy it; the license id."""
    app = parts.application
    await app.handle(RegisterLicensableAsset(asset_id=asset_id, owner_id=OWNER, title="t", media_type="image/jpeg"))
    offer = OfferLicense(asset_id=asset_id, buyer_id=BUYER, price_cents=4_900, allowed_uses=allowed_uses)
    await app.handle(offer)
    await app.handle(PurchaseLicense(license_id=offer.license_id, buyer_id=BUYER))
    return offer.license_id


@contextlib.contextmanager
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[datetime], None]]:
    """Set the time the application stamps on envelopes (``occurred_at``), to spread events over days."""
    import tidings.app.application as application

    def set_to(moment: datetime) -> None:
        monkeypatch.setattr(application, "utc_now", lambda: moment)

    yield set_to
    monkeypatch.undo()


# -- the anti-corruption layer -----------------------------------------------------------------------


async def test_asset_ready_for_search_through_the_broker_makes_the_asset_offerable(sqlite_store: Store) -> None:
    parts = build(sqlite_store, FAST)
    broker = LocalBroker(sqlite_store, poll_interval=0.02)
    [acl] = parts.consumers
    acl.attach(sqlite_store, broker)
    offer = OfferLicense(asset_id="asset-7", buyer_id=BUYER, price_cents=4_900, allowed_uses=3)
    with pytest.raises(DomainError, match="not searchable yet"):
        await parts.application.handle(offer)

    sent = await publish_as_producer(sqlite_store, ready("asset-7"), key="asset-7", source="asset_processing")
    await Relay(sqlite_store, broker).drain()
    async with running(acl) as task:
        await until(lambda: acl.stats.applied == 1, "the ACL applied AssetReadyForSearch", task)

    asset = await parts.application.load(LicensableAsset, "asset-7")
    assert (asset.registered, asset.owner_id, asset.title, asset.media_type) == (True, OWNER, "Harbour at dawn", "image/jpeg")
    result = await parts.application.handle(offer)
    assert result.value.id == license_id_for("asset-7", BUYER)
    # The registration is traced to the command the ACL ran, and that command to the contract that caused it.
    [registered] = [e for e in await sqlite_store.read_correlation(sent.correlation_id) if e.event_type.endswith("Registered")]
    envelope = msgspec.json.decode(registered.envelope, type=Envelope)
    assert envelope.command_causation_id == sent.event_id
    assert envelope.causation_id not in {None, sent.event_id}


async def test_a_redelivered_asset_ready_for_search_registers_the_asset_once(sqlite_store: Store) -> None:
    parts = build(sqlite_store, FAST)
    broker = LocalBroker(sqlite_store, poll_interval=0.02)
    [acl] = parts.consumers
    acl.attach(sqlite_store, broker)
    # Two producer-side publications of the same fact (the saga retried, say): two event ids.
    await publish_as_producer(sqlite_store, ready("asset-7"), key="asset-7", source="asset_processing")
    await publish_as_producer(sqlite_store, ready("asset-7", title="Renamed later"), key="asset-7", source="asset_processing")
    await Relay(sqlite_store, broker).drain()
    async with running(acl) as task:
        await until(lambda: acl.stats.applied == 2, "both deliveries were applied", task)

    asset = await parts.application.load(LicensableAsset, "asset-7")
    assert (asset.version, asset.title) == (1, "Harbour at dawn")


async def test_garbage_on_the_asset_topic_is_dead_lettered_with_a_reason_and_good_assets_still_flow(sqlite_store: Store) -> None:
    parts = build(sqlite_store, FAST)
    broker = LocalBroker(sqlite_store, poll_interval=0.02)
    [acl] = parts.consumers
    acl.attach(sqlite_store, broker)
    name = AssetReadyForSearch.message_name
    good = msgspec.json.encode(ready("asset-ok"))
    blank_title = msgspec.json.encode(ready("asset-blank", title="   "))
    await publish_raw(broker, key="k-json", event_type=name, payload=b"{not json")
    await publish_raw(broker, key="k-field", event_type=name, payload=b'{"asset_id": "a", "owner_id": 7}')
    await publish_raw(broker, key="asset-blank", event_type=name, payload=blank_title)
    await publish_raw(broker, key="k-type", event_type="asset_processing.AssetDeleted", payload=good)
    # A real contract, on the wrong topic: not something this ACL understands either.
    stray = UsageViolationDetected(license_id="l", asset_id="a", buyer_id="b", used=2, allowed=1)
    await publish_raw(broker, key="k-stray", event_type=stray.message_name, payload=msgspec.json.encode(stray))
    await publish_raw(broker, key="k-version", event_type=name, payload=good, version=2)
    await publish_raw(broker, key="asset-ok", event_type=name, payload=good)

    async with running(acl) as task:
        await until(lambda: acl.stats.dead == 6 and acl.stats.applied == 1, "6 dead letters and 1 applied", task)

    dead = {d.key: d for d in await DeadLetters(sqlite_store).list(consumer=ASSET_ACL_CONSUMER)}
    assert sorted(dead) == ["asset-blank", "k-field", "k-json", "k-stray", "k-type", "k-version"]
    assert all(d.reason == "not retryable" and d.status == "dead" for d in dead.values())
    assert "not valid JSON" in dead["k-json"].error
    assert "owner_id" in dead["k-field"].error
    assert dead["asset-blank"].error == "ValidationError: RegisterLicensableAsset.title: must not be blank"
    assert dead["k-type"].error.startswith("UnknownMessageType: unknown message type 'asset_processing.AssetDeleted'")
    assert dead["k-stray"].error.startswith("UnknownMessageType: unknown message type 'licensing.UsageViolationDetected'")
    assert dead["k-version"].error.startswith("IncompatibleVersion: asset_processing.AssetReadyForSearch v2")
    assert (await parts.application.load(LicensableAsset, "asset-ok")).registered
    with pytest.raises(AggregateNotFound):
        await parts.application.load(LicensableAsset, "asset-blank")


# -- commands and the contracts they publish --------------------------------------------------------


async def test_offering_an_asset_that_is_not_searchable_is_refused_and_writes_nothing(sqlite_store: Store) -> None:
    parts = build(sqlite_store, FAST)
    offer = OfferLicense(asset_id="asset-unknown", buyer_id=BUYER, price_cents=100, allowed_uses=1)

    with pytest.raises(DomainError, match="asset-unknown is not searchable yet"):
        await parts.application.handle(offer)

    with pytest.raises(AggregateNotFound):
        await parts.application.load(License, offer.license_id)
    assert await sqlite_store.count("journal") == 0
    assert await sqlite_store.count("outbox") == 0


async def test_an_invalid_offer_names_the_field(sqlite_store: Store) -> None:
    parts = build(sqlite_store, FAST)
    with pytest.raises(ValidationError) as refused:
        await parts.application.handle(OfferLicense(asset_id="a", buyer_id=BUYER, price_cents=0, allowed_uses=1))
    assert refused.value.field == "price_cents"


async def test_a_second_purchase_is_refused_and_one_confirmation_v2_is_published(sqlite_store: Store) -> None:
    parts = build(sqlite_store, FAST)
    license_id = await sold_license(parts)

    with pytest.raises(DomainError, match="already purchased"):
        await parts.application.handle(PurchaseLicense(license_id=license_id, buyer_id=BUYER))
    with pytest.raises(AggregateNotFound):
        await parts.application.handle(PurchaseLicense(license_id="no-such-license", buyer_id=BUYER))

    [(key, envelope, confirmed)] = await outbox(sqlite_store, LICENSE_PURCHASE_CONFIRMED_TOPIC)
    assert key == license_id
    assert (envelope.schema_version, envelope.source) == (2, "licensing")
    assert confirmed == LicensePurchaseConfirmed(
        license_id=license_id, asset_id="asset-7", buyer_id=BUYER, price_cents=4_900, currency="EUR"
    )


async def test_usage_past_the_allowance_publishes_usage_violation_detected(sqlite_store: Store) -> None:
    parts = build(sqlite_store, FAST)
    license_id = await sold_license(parts, allowed_uses=3)

    await parts.application.handle(ReportUsage(license_id=license_id, uses=2))
    assert await outbox(sqlite_store, USAGE_VIOLATION_DETECTED_TOPIC) == []
    await parts.application.handle(ReportUsage(license_id=license_id, uses=1))
    assert await outbox(sqlite_store, USAGE_VIOLATION_DETECTED_TOPIC) == []
    await parts.application.handle(ReportUsage(license_id=license_id, uses=2))

    [(key, _, violation)] = await outbox(sqlite_store, USAGE_VIOLATION_DETECTED_TOPIC)
    assert key == license_id
    assert violation == UsageViolationDetected(license_id=license_id, asset_id="asset-7", buyer_id=BUYER, used=5, allowed=3)
    reports = [event for _, _, event in await outbox(sqlite_store, LICENSE_USAGE_REPORTED_TOPIC)]
    assert reports == [
        LicenseUsageReported(license_id=license_id, asset_id="asset-7", buyer_id=BUYER, uses=uses, used=used, allowed=3)
        for uses, used in [(2, 2), (1, 3), (2, 5)]
    ]


async def test_a_v1_purchase_confirmation_from_an_old_producer_is_upcast_when_delivered(sqlite_store: Store) -> None:
    parts = build(sqlite_store, FAST)
    broker = LocalBroker(sqlite_store, poll_interval=0.02)
    old = LicensePurchaseConfirmedV1(license_id="lic-old", asset_id="asset-1", buyer_id="carol", price_cents=1_200)
    await publish_as_producer(sqlite_store, old, key="lic-old", source="licensing")
    license_id = await sold_license(parts)  # the current producer: v2 with its currency
    await Relay(sqlite_store, broker).drain()

    # A reader of the contract (Compliance, billing…) knows only the current class and the upcaster.
    received: list[tuple[int, LicensePurchaseConfirmed]] = []
    reader = Consumer(
        "test.purchase-reader", sqlite_store, broker, topics=[LICENSE_PURCHASE_CONFIRMED_TOPIC], registry=contract_registry()
    )

    @reader.handler(LicensePurchaseConfirmed)
    async def record(event: LicensePurchaseConfirmed, ctx: HandlerContext) -> None:
        received.append((ctx.envelope.schema_version, event))

    async with running(reader) as task:
        await until(lambda: len(received) == 2, "both confirmations were delivered", task)

    assert received == [
        (1, LicensePurchaseConfirmed(license_id="lic-old", asset_id="asset-1", buyer_id="carol", price_cents=1_200, currency=V1_CURRENCY)),
        (2, LicensePurchaseConfirmed(license_id=license_id, asset_id="asset-7", buyer_id=BUYER, price_cents=4_900, currency="EUR")),
    ]
    assert reader.stats.dead == 0


# -- the LicenseUsageByDay read model --------------------------------------------------------------


DAY_1, DAY_2, DAY_3 = date(2025, 3, 1), date(2025, 3, 2), date(2025, 3, 4)


def noon(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC)


async def three_days_of_licensing(parts: ContextParts, set_clock: Callable[[datetime], None]) -> None:
    """Day 1: two purchases, one report; day 2: two reports, the second past the allowance; day 3: a purchase."""
    app = parts.application
    set_clock(noon(DAY_1))
    first = await sold_license(parts, "asset-1", allowed_uses=5)
    second = await sold_license(parts, "asset-2", allowed_uses=2)
    await app.handle(ReportUsage(license_id=first, uses=4))
    # Just before midnight UTC still counts for day 1.
    set_clock(noon(DAY_1) + timedelta(hours=11, minutes=59))
    await app.handle(ReportUsage(license_id=second, uses=1))
    set_clock(noon(DAY_2))
    await app.handle(ReportUsage(license_id=second, uses=1))
    await app.handle(ReportUsage(license_id=second, uses=3))
    set_clock(noon(DAY_3))
    await sold_license(parts, "asset-3", allowed_uses=1)


EXPECTED_DAYS = [
    DayUsage(DAY_1, purchases=2, usage_reports=2, uses=5, violations=0),
    DayUsage(DAY_2, purchases=0, usage_reports=2, uses=4, violations=1),
    DayUsage(DAY_3, purchases=1, usage_reports=0, uses=0, violations=0),
]


async def test_usage_by_day_counts_purchases_and_usage_on_the_day_they_happened(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = build(store, FAST)
    projector = Projector(store, parts.projections)
    usage_by_day = parts.extras["usage_by_day"]
    with clock(monkeypatch) as set_clock:
        await three_days_of_licensing(parts, set_clock)

    await projector.catch_up()

    assert await usage_by_day() == EXPECTED_DAYS
    assert await usage_by_day(start=DAY_2) == EXPECTED_DAYS[1:]
    assert await usage_by_day(start=DAY_2, end=DAY_2) == EXPECTED_DAYS[1:2]


async def test_rebuilding_usage_by_day_from_history_gives_the_incremental_result(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = build(store, FAST)
    projector = Projector(store, parts.projections)
    usage_by_day = parts.extras["usage_by_day"]
    [projection] = parts.projections
    with clock(monkeypatch) as set_clock:
        set_clock(noon(DAY_1))
        await sold_license(parts, "asset-0", allowed_uses=9)
        await projector.catch_up()  # part of the history applied incrementally, the rest later
        await three_days_of_licensing(parts, set_clock)
    await projector.catch_up()
    incremental = await usage_by_day()
    # Spoil the live table, so only a replay from the journal can bring the right figures back.
    await store.run(f"DELETE FROM {projection.table('licensing_usage_by_day')}")

    result = await projector.rebuild(projection.name)

    assert result.events == 9  # 4 purchases, 4 usage reports, 1 violation: the whole history, replayed
    assert await usage_by_day() == incremental
    assert incremental[0] == DayUsage(DAY_1, purchases=3, usage_reports=2, uses=5, violations=0)


# -- the HTTP routes -------------------------------------------------------------------------------


def http_client(parts: ContextParts, correlation_id: str | None = None) -> httpx.AsyncClient:
    """A client of a bare FastAPI app with Licensing's router under /licensing (no error mapping: the root does that)."""
    api = FastAPI()
    if correlation_id is not None:

        @api.middleware("http")
        async def correlate(request: Any, call_next: Any) -> Any:
            request.state.correlation_id = correlation_id
            return await call_next(request)

    assert parts.router is not None
    api.include_router(parts.router(parts), prefix="/licensing")
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://test")


async def test_http_routes_offer_purchase_report_usage_and_read(sqlite_store: Store) -> None:
    parts = build(sqlite_store, FAST)
    await parts.application.handle(RegisterLicensableAsset(asset_id="asset-7", owner_id=OWNER, title="t", media_type="image/png"))
    await Projector(sqlite_store, parts.projections).prepare()
    license_id = license_id_for("asset-7", BUYER)
    async with http_client(parts, correlation_id="corr-42") as http:
        offered = await http.post(
            "/licensing/licenses", json={"asset_id": "asset-7", "buyer_id": BUYER, "price_cents": 900, "allowed_uses": 1}
        )
        bought = await http.post(f"/licensing/licenses/{license_id}/purchase", json={"buyer_id": BUYER})
        used = await http.post(f"/licensing/licenses/{license_id}/usage", json={"uses": 2})
        shown = await http.get(f"/licensing/licenses/{license_id}")
        days = await http.get("/licensing/usage-by-day")

    assert offered.status_code == 201, offered.text
    assert offered.json()["license"]["license_id"] == license_id
    assert offered.json()["correlation_id"] == "corr-42"
    assert bought.status_code == 200 and bought.json()["license"]["sold"] is True
    assert used.status_code == 200 and used.json()["exceeded"] is True and used.json()["license"]["used"] == 2
    assert shown.json() == {
        "license_id": license_id, "asset_id": "asset-7", "buyer_id": BUYER, "price_cents": 900, "currency": "EUR",
        "allowed_uses": 1, "used": 2, "sold": True, "version": 4,
    }  # fmt: skip
    assert days.status_code == 200 and days.json() == []  # the projector has not run
    events = await sqlite_store.read_correlation("corr-42")
    assert len(events) == 4  # offered, purchased, usage reported, usage exceeded


async def test_http_routes_leave_errors_to_the_composition_root(sqlite_store: Store) -> None:
    parts = build(sqlite_store, FAST)
    async with http_client(parts) as http:
        with pytest.raises(DomainError):
            await http.post("/licensing/licenses", json={"asset_id": "nope", "buyer_id": BUYER, "price_cents": 1, "allowed_uses": 1})
        with pytest.raises(AggregateNotFound):
            await http.get("/licensing/licenses/no-such-license")
        malformed = await http.post("/licensing/licenses/x/usage", json={"uses": "many"})
        # Values out of the documented bounds never reach the command either
        out_of_bounds = await http.post(f"/licensing/licenses/{license_id_for('a', BUYER)}/usage", json={"uses": 0})
    for refused in (malformed, out_of_bounds):
        assert refused.status_code == 422  # shape and bounds: FastAPI's own 422, naming the field
        assert refused.json()["detail"][0]["loc"] == ["body", "uses"]


async def test_a_buyer_id_is_sealed_in_every_table_and_reads_as_the_mask_once_the_buyer_is_forgotten(sqlite_store: Store) -> None:
    # Given a license offered to, bought and used by a buyer
    buyer = "buyer-plaintext-4711"
    app = build(sqlite_store, FAST).application
    await app.handle(RegisterLicensableAsset(asset_id="asset-9", owner_id=OWNER, title="t", media_type="image/jpeg"))
    offer = OfferLicense(asset_id="asset-9", buyer_id=buyer, price_cents=4_900, allowed_uses=1)
    await app.handle(offer)
    await app.handle(PurchaseLicense(license_id=offer.license_id, buyer_id=buyer))

    # Then the buyer's id is in no table of tidings' in plaintext (journal, state, outbox), yet loads whole
    for table in ("journal", "aggregate_state", "outbox"):
        rows = await sqlite_store.fetch(f"SELECT * FROM tidings_{table}")
        assert rows and buyer not in repr(rows), f"the buyer's id is in tidings_{table} in plaintext"
    assert (await app.load(License, offer.license_id)).buyer_id == buyer

    # When the buyer is forgotten, Then the license reads the mask, and its confirmation too
    assert await forget_subject(sqlite_store, buyer)
    assert (await app.load(License, offer.license_id)).buyer_id == DEFAULT_MASK
    [(_, _, confirmed)] = await outbox(sqlite_store, LICENSE_PURCHASE_CONFIRMED_TOPIC)
    assert confirmed.buyer_id == DEFAULT_MASK and confirmed.price_cents == 4_900
