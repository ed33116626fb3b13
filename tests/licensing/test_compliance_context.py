"""Compliance end to end in one process: outbox → relay → local broker → consumers → investigations and read models.

Runs on both stores (SQLite, and PostgreSQL when it is up; under CI=true a missing PostgreSQL fails).
Licensing's contracts are put on the broker the way Licensing does it — an outbox row committed,
then relayed — without importing Licensing, as Compliance itself never does. Garbage is fed for
real through the gateway: bytes that are not JSON, arrays, missing and malformed fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from examples.licensing.compliance.application import (
    PARTNER_FEED_TOPIC,
    PartnerReportRejected,
    partner_event_id,
    read_partner_report,
)
from examples.licensing.compliance.domain import (
    CloseInvestigation,
    InfringementDetected,
    Investigation,
    InvestigationStatus,
    OpenInvestigation,
    RequestReview,
    investigation_id_for,
)
from examples.licensing.compliance.infrastructure.alerts import ALERTS_TABLE, open_alerts
from examples.licensing.compliance.infrastructure.api import split_records
from examples.licensing.compliance.infrastructure.consumers import LICENSING_EVENTS_CONSUMER, PARTNER_FEED_CONSUMER
from examples.licensing.compliance.infrastructure.gateway import submit_partner_batch
from examples.licensing.compliance.infrastructure.tables import partner_reports
from examples.licensing.compliance.infrastructure.wiring import build
from examples.licensing.contracts import LicensePurchaseConfirmed, LicensePurchaseConfirmedV1, UsageViolationDetected
from examples.licensing.kernel import ContextParts, Settings
from tidings.app.outgoing import outbox_entry
from tidings.messaging.personal import subjects_of
from tidings.store.subject_keys import SubjectKeys
from tidings.brokers import Broker, open_broker
from tidings.domain import AggregateNotFound, Command, ConcurrencyError, DomainError, ValidationError
from tidings.messaging import MessageContext, new_id
from tidings.runtime import Consumer, DeadLetter, DeadLetters, Projector, Relay
from tidings.store import Store
from tidings.store.records import Changes

#: Fast retries: a test waits milliseconds, not seconds, for a message to be dead-lettered.
SETTINGS = Settings(immediate_retries=0, delayed_retries=1, retry_base=0.01)

ALICE_LICENSE = "lic-alice"
BOB_LICENSE = "lic-bob"


# -- helpers --------------------------------------------------------------------------------------


@pytest.fixture
async def broker(store: Store) -> AsyncIterator[Broker]:
    """The local broker on the test's store (its durable log), polled often."""
    broker = await open_broker("local:", store=store, poll_interval=0.02)
    yield broker
    await broker.close()


@pytest.fixture
def parts(store: Store, broker: Broker) -> ContextParts:
    """Compliance built on the test's store, its consumers attached to the broker as the composition root does."""
    parts = build(store, SETTINGS)
    for consumer in parts.consumers:
        consumer.attach(store, broker)
    return parts


def consumer_of(parts: ContextParts, name: str) -> Consumer:
    """The consumer of ``parts`` named ``name``."""
    return next(consumer for consumer in parts.consumers if consumer.name == name)


@contextlib.asynccontextmanager
async def running(consumer: Consumer) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``consumer`` in a task; on exit stop it and re-raise whatever crashed it."""
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(consumer.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def until(check: Callable[[], Awaitable[bool]], task: asyncio.Task[None], what: str, timeout: float = 20.0) -> None:
    """Wait until ``check()`` holds; fail with ``what`` on timeout, or at once if the consumer crashed."""
    deadline = time.monotonic() + timeout
    while not await check():
        if task.done():
            task.result()
            pytest.fail(f"the consumer stopped before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        await asyncio.sleep(0.02)


async def all_acked(store: Store, group: str, topic: str) -> bool:
    """Whether ``group`` acked every message on ``topic`` of the local log."""
    last = await store.fetch("SELECT coalesce(max(position), 0) FROM tidings_local_log WHERE topic = ?", (topic,))
    done = await store.fetch("SELECT position FROM tidings_local_offsets WHERE group_name = ?", (group,))
    return bool(done) and int(done[0][0]) >= int(last[0][0])


async def publish_contracts(store: Store, broker: Broker, *events: Any, correlation_id: str | None = None) -> list[str]:
    """Commit an outbox row per Licensing contract (as Licensing would) and relay them; their event ids."""
    keys = SubjectKeys(store)  # buyer ids are personal: sealed as Licensing's unit of work would
    await keys.prepare_subjects([s for event in events for s in subjects_of(event, "a test contract")], "a test")
    entries = [
        outbox_entry(
            event, topic=type(event).contract_topic, key=event.license_id, source="licensing",
            context=MessageContext(correlation_id=correlation_id), keys=keys,
        )
        for event in events
    ]  # fmt: skip
    await store.commit(Changes(outbox=[entry for _, entry in entries]))
    await Relay(store, broker).drain()
    return [envelope.event_id for envelope, _ in entries]


def violation(license_id: str = ALICE_LICENSE, used: int = 4, allowed: int = 3) -> UsageViolationDetected:
    """Licensing's violation of ``license_id`` (asset and buyer named after it)."""
    return UsageViolationDetected(
        license_id=license_id, asset_id=f"asset-of-{license_id}", buyer_id=f"buyer-of-{license_id}", used=used, allowed=allowed
    )


def purchase(license_id: str) -> LicensePurchaseConfirmed:
    """Licensing's confirmation that ``license_id`` was bought by its buyer."""
    return LicensePurchaseConfirmed(
        license_id=license_id, asset_id=f"asset-of-{license_id}", buyer_id=f"buyer-of-{license_id}",
        price_cents=1200, currency="EUR",
    )  # fmt: skip


def report(report_id: str | int | None, license_id: str = ALICE_LICENSE, **fields: Any) -> dict[str, Any]:
    """A partner record in the partners' vocabulary (``client`` is our buyer, amounts are text)."""
    record: dict[str, Any] = {
        "report_id": report_id,
        "license": license_id,
        "client": f"buyer-of-{license_id}",
        "units_used": "12.50",
        "units_licensed": "10",
        "period_end": "31/12/2024",
    }
    record.update(fields)
    return {key: value for key, value in record.items() if value is not None}


async def dead_letters(store: Store, consumer: str) -> list[DeadLetter]:
    """The dead letters of ``consumer``, oldest first."""
    return await DeadLetters(store).list(consumer=consumer, statuses=("dead",), limit=500)


# -- ACL 1: UsageViolationDetected ----------------------------------------------------------------


async def test_a_usage_violation_through_the_broker_opens_the_license_investigation(
    store: Store, broker: Broker, parts: ContextParts
) -> None:
    # Given Licensing published a violation of Alice's license (outbox → relay → broker)
    correlation_id = new_id()
    [event_id] = await publish_contracts(store, broker, violation(used=4, allowed=3), correlation_id=correlation_id)
    consumer = consumer_of(parts, LICENSING_EVENTS_CONSUMER)

    # When Compliance's consumer applies it
    async with running(consumer) as task:
        await until(lambda: all_acked(store, consumer.name, violation().topic), task, "the violation was applied")

    # Then the license's investigation is open with the violation's numbers
    investigation = await parts.application.load(Investigation, investigation_id_for(ALICE_LICENSE))
    assert investigation.status is InvestigationStatus.OPEN
    assert (investigation.buyer_id, investigation.used, investigation.allowed, investigation.infringements) == (
        "buyer-of-lic-alice", 4, 3, 1,
    )  # fmt: skip
    # And its event keeps the flow's correlation; its command was caused by the violation message
    [stored] = await store.read_correlation(correlation_id)
    assert stored.event_type == InfringementDetected.message_name
    envelope = json.loads(stored.envelope)
    assert envelope["command_causation_id"] == event_id
    assert envelope["causation_id"] not in {None, event_id}
    assert json.loads(stored.payload)["source"] == "licensing"


async def test_every_violation_of_one_license_lands_in_its_one_investigation_and_duplicates_count_once(
    store: Store, broker: Broker, parts: ContextParts
) -> None:
    # Given two violations of Alice's license, one of Bob's, and a redelivered copy of the first
    first, _, _ = await publish_contracts(
        store, broker, violation(used=4), violation(used=6), violation(BOB_LICENSE, used=9, allowed=5)
    )
    copy = await store.fetch("SELECT topic, partition, key, event_id, headers, payload FROM tidings_local_log WHERE event_id = ?", (first,))
    await store.run(
        "INSERT INTO tidings_local_log (topic, partition, key, event_id, headers, payload) VALUES (?, ?, ?, ?, ?, ?)",
        (copy[0][0], copy[0][1], copy[0][2], f"{first}-again", copy[0][4], copy[0][5]),
    )
    consumer = consumer_of(parts, LICENSING_EVENTS_CONSUMER)

    async with running(consumer) as task:
        await until(lambda: all_acked(store, consumer.name, violation().topic), task, "every violation was applied")

    # Then Alice has one investigation with two infringements (the copy was the same message), Bob one
    alice = await parts.application.load(Investigation, investigation_id_for(ALICE_LICENSE))
    bob = await parts.application.load(Investigation, investigation_id_for(BOB_LICENSE))
    assert (alice.infringements, alice.used) == (2, 6)
    assert (bob.infringements, bob.used, bob.allowed) == (1, 9, 5)
    assert consumer.stats.duplicates == 1


async def test_a_v1_purchase_is_upcast_and_teaches_compliance_the_license(
    store: Store, broker: Broker, parts: ContextParts
) -> None:
    # Given Licensing once published a purchase as v1 (before currencies)
    old = LicensePurchaseConfirmedV1(license_id="lic-old", asset_id="asset-old", buyer_id="olga", price_cents=900)
    await publish_contracts(store, broker, old)
    licensing = consumer_of(parts, LICENSING_EVENTS_CONSUMER)
    async with running(licensing) as task:
        await until(lambda: all_acked(store, licensing.name, old.topic), task, "the v1 purchase was applied")
    assert licensing.stats.applied == 1
    # When Olga's partner reports her usage past the allowance
    await submit_partner_batch(broker, [report("OLD-1", "lic-old", client="olga")], partner="acme")
    feed = consumer_of(parts, PARTNER_FEED_CONSUMER)
    async with running(feed) as task:
        await until(lambda: all_acked(store, feed.name, PARTNER_FEED_TOPIC), task, "the report was applied")
    # Then the license was known, with its asset, and its investigation is open
    investigation = await parts.application.load(Investigation, investigation_id_for("lic-old"))
    assert (investigation.asset_id, investigation.buyer_id) == ("asset-old", "olga")


# -- ACL 2: the legacy partner feed ----------------------------------------------------------------


GARBAGE: list[tuple[bytes | dict[str, Any], str]] = [
    (b"this is not json at all", "not valid JSON"),
    (b"[1, 2, 3]", "record: is a JSON array, not an object with the report's fields"),
    (report(None), "a report without a usable report_id: report_id: is missing"),
    (report("G-1", client=None), "report 'G-1': client: is missing"),
    (report("G-2", units_used="12,5x"), "report 'G-2': units_used: must be an amount like '12' or '12.50' (at most two decimals); got '12,5x'"),
    (report("G-3", units_licensed="-3"), "report 'G-3': units_licensed: must not be negative, got '-3'"),
    (report("G-4", period_end="2024-12-31"), "report 'G-4': period_end: must be a date as DD/MM/YYYY, like '31/12/2024'; got '2024-12-31'"),
    (report("G-5", "lic-nobody-bought"), "report 'G-5': license: unknown license 'lic-nobody-bought'"),
    (report("G-6", client="mallory"), "report 'G-6': client: 'mallory' is not the buyer of license 'lic-alice' (it was sold to 'buyer-of-lic-alice')"),
]  # fmt: skip


async def test_a_partner_batch_applies_valid_reports_once_and_dead_letters_garbage_with_reasons(
    store: Store, broker: Broker, parts: ContextParts
) -> None:
    # Given Compliance knows Alice's and Bob's purchases
    licensing = consumer_of(parts, LICENSING_EVENTS_CONSUMER)
    await publish_contracts(store, broker, purchase(ALICE_LICENSE), purchase(BOB_LICENSE))
    async with running(licensing) as task:
        await until(lambda: all_acked(store, licensing.name, purchase(ALICE_LICENSE).topic), task, "purchases known")

    # And a partner batch: Alice over her allowance (sent three times, as a dict and as bytes),
    # Bob within his, and garbage of every kind in between
    over = report("R-1", units_used="12.50", units_licensed="10")
    batch: list[bytes | dict[str, Any]] = [over, *(record for record, _ in GARBAGE), json.dumps(over).encode(), over]
    batch.append(report("R-2", BOB_LICENSE, units_used="7", units_licensed="10.00"))
    receipt = await submit_partner_batch(broker, batch, partner="acme")
    assert receipt.accepted == len(batch)
    assert receipt.distinct == len(batch) - 2  # the copies of R-1 share one event id

    # When the partner-feed consumer applies the feed
    feed = consumer_of(parts, PARTNER_FEED_CONSUMER)
    async with running(feed) as task:
        await until(lambda: all_acked(store, feed.name, PARTNER_FEED_TOPIC), task, "the batch was applied")
        # Then the worker survived the garbage: a report sent afterwards is still applied
        await submit_partner_batch(broker, [report("R-3", BOB_LICENSE, units_used="11", units_licensed="10")], partner="acme")
        await until(lambda: all_acked(store, feed.name, PARTNER_FEED_TOPIC), task, "the later report was applied")
        assert not task.done()

    # And each valid report was applied once, in our vocabulary
    applied = {(r.report_id, r.buyer_id, r.units_used, r.outcome) for r in await partner_reports(store, "acme")}
    assert applied == {
        ("R-1", "buyer-of-lic-alice", "12.50", "infringement"),
        ("R-2", "buyer-of-lic-bob", "7", "within allowance"),
        ("R-3", "buyer-of-lic-bob", "11", "infringement"),
    }
    alice = await parts.application.load(Investigation, investigation_id_for(ALICE_LICENSE))
    # 12.50 units used of 10 licensed: a started unit counts as a use
    assert (alice.infringements, alice.used, alice.allowed, alice.asset_id) == (1, 13, 10, "asset-of-lic-alice")
    bob = await parts.application.load(Investigation, investigation_id_for(BOB_LICENSE))
    assert (bob.infringements, bob.used) == (1, 11)

    # And every garbage record is a dead letter whose reason names the field and what was wrong
    # (kept as received, so an operator sees what the partner sent, and can replay it)
    reasons = {row.payload: row.error for row in await dead_letters(store, PARTNER_FEED_CONSUMER)}
    expected = {raw(record): reason for record, reason in GARBAGE}
    assert set(reasons) == set(expected)
    for payload, reason in expected.items():
        assert reason in reasons[payload], f"{reasons[payload]!r} does not say {reason!r}"


def raw(record: bytes | dict[str, Any]) -> bytes:
    """The bytes the gateway puts on the feed for ``record``."""
    return record if isinstance(record, bytes) else json.dumps(record, separators=(",", ":")).encode()


async def test_a_dead_report_is_applied_when_replayed_once_its_license_is_known(
    store: Store, broker: Broker, parts: ContextParts
) -> None:
    # Given a report of a license Compliance has not heard of was dead-lettered
    feed = consumer_of(parts, PARTNER_FEED_CONSUMER)
    await submit_partner_batch(broker, [report("EARLY-1", "lic-late")], partner="acme")
    async with running(feed) as task:
        await until(lambda: all_acked(store, feed.name, PARTNER_FEED_TOPIC), task, "the early report was dead-lettered")
    [dead] = await dead_letters(store, PARTNER_FEED_CONSUMER)
    assert "unknown license 'lic-late'" in dead.error

    # When the purchase becomes known and an operator replays the dead letter
    licensing = consumer_of(parts, LICENSING_EVENTS_CONSUMER)
    await publish_contracts(store, broker, purchase("lic-late"))
    async with running(licensing) as task:
        await until(lambda: all_acked(store, licensing.name, purchase("lic-late").topic), task, "the purchase was known")
    assert await DeadLetters(store).request_replay([dead.id]) == 1
    async with running(feed) as task:
        await until(
            lambda: _investigation_exists(parts, "lic-late"), task, "the replayed report opened the investigation"
        )

    # Then the report was applied once, as a partner infringement
    [applied] = await partner_reports(store, "acme")
    assert (applied.report_id, applied.outcome) == ("EARLY-1", "infringement")


async def _investigation_exists(parts: ContextParts, license_id: str) -> bool:
    try:
        await parts.application.load(Investigation, investigation_id_for(license_id))
    except AggregateNotFound:
        return False
    return True


def test_copies_of_a_report_share_one_event_id_per_partner() -> None:
    # The same report id from two partners are two reports; from one partner, one
    assert partner_event_id("acme", "R-1") == partner_event_id("acme", "R-1")
    assert partner_event_id("acme", "R-1") != partner_event_id("globex", "R-1")
    assert partner_event_id("a", "b:c") != partner_event_id("a:b", "c")


@pytest.mark.parametrize(
    ("fields", "field", "problem"),
    [
        ({"units_used": "12.505"}, "units_used", "at most two decimals"),
        ({"units_used": True}, "units_used", "got True"),
        ({"units_used": "2000000"}, "units_used", "must be at most 1000000"),
        ({"units_licensed": None}, "units_licensed", "is missing"),
        ({"period_end": "31/02/2024"}, "period_end", "got '31/02/2024'"),
        ({"license": "   "}, "license", "must be a non-blank text"),
        ({"report_id": ""}, "report_id", "must be a non-blank text"),
    ],
)
def test_a_malformed_partner_record_is_rejected_naming_the_field(fields: dict[str, Any], field: str, problem: str) -> None:
    with pytest.raises(PartnerReportRejected) as rejected:
        read_partner_report("acme", {**report("R-9"), **fields})
    assert rejected.value.field == field
    assert problem in str(rejected.value)


def test_partner_amounts_are_read_exactly_and_rounded_against_the_infringer_only_when_over() -> None:
    within = read_partner_report("acme", report("R-1", units_used="10.00", units_licensed="10"))
    assert not within.over_allowance
    over = read_partner_report("acme", report("R-2", units_used=10.25, units_licensed="10.20"))
    assert over.over_allowance
    assert over.period_end.isoformat() == "2024-12-31"


# -- the alerts feed --------------------------------------------------------------------------------


async def open_three_investigations(parts: ContextParts, after_each: Callable[[], Awaitable[Any]] | None = None) -> None:
    """Alice's, then Bob's, then Carol's license infringed; Bob's reviewed, Alice's infringed again; Carol's closed."""
    commands: list[Command] = [
        OpenInvestigation(
            license_id=license_id, asset_id=f"asset-of-{license_id}", buyer_id=f"buyer-of-{license_id}",
            used=5, allowed=3, source="licensing",
        )
        for license_id in (ALICE_LICENSE, BOB_LICENSE, "lic-carol")
    ]  # fmt: skip
    commands += [
        RequestReview(investigation_id=investigation_id_for(BOB_LICENSE), reviewer="rita"),
        OpenInvestigation(
            license_id=ALICE_LICENSE, asset_id="asset-of-lic-alice", buyer_id="buyer-of-lic-alice",
            used=8, allowed=3, source="partner:acme",
        ),
        # A report older than the worst one seen: it counts, but the worst usage stays
        OpenInvestigation(
            license_id=ALICE_LICENSE, asset_id="asset-of-lic-alice", buyer_id="buyer-of-lic-alice",
            used=6, allowed=3, source="licensing",
        ),
        CloseInvestigation(investigation_id=investigation_id_for("lic-carol"), outcome="dismissed", reason="false alarm"),
    ]  # fmt: skip
    for command in commands:
        await parts.application.handle(command)
        await asyncio.sleep(0.002)  # distinct times
        if after_each is not None:
            await after_each()


async def test_the_alerts_feed_lists_open_investigations_newest_first(store: Store, parts: ContextParts) -> None:
    projector = Projector(store, parts.projections)
    await open_three_investigations(parts)

    await projector.catch_up()

    alerts = await parts.extras["alerts"]()
    assert [(a.license_id, a.status, a.infringements, a.used, a.last_source, a.reviewer) for a in alerts] == [
        (BOB_LICENSE, "under_review", 1, 5, "licensing", "rita"),
        (ALICE_LICENSE, "open", 3, 8, "licensing", None),
    ]
    assert alerts[0].opened_at > alerts[1].opened_at
    # A new infringement brings a closed investigation back, as the newest alert
    await parts.application.handle(
        OpenInvestigation(
            license_id="lic-carol", asset_id="asset-of-lic-carol", buyer_id="buyer-of-lic-carol",
            used=4, allowed=3, source="licensing",
        )
    )  # fmt: skip
    await projector.catch_up()
    assert [a.license_id for a in await open_alerts(store, limit=2)] == ["lic-carol", BOB_LICENSE]


async def test_the_alerts_feed_rebuilt_from_history_equals_the_incrementally_built_one(
    store: Store, parts: ContextParts
) -> None:
    projector = Projector(store, parts.projections)
    # Built incrementally: caught up after every command
    await open_three_investigations(parts, after_each=projector.catch_up)
    incremental = await store.fetch(f"SELECT * FROM {ALERTS_TABLE} ORDER BY investigation_id")
    assert len(incremental) == 2

    await projector.rebuild("compliance_alerts_feed")

    assert await store.fetch(f"SELECT * FROM {ALERTS_TABLE} ORDER BY investigation_id") == incremental


# -- the HTTP API ---------------------------------------------------------------------------------


def api_of(parts: ContextParts, broker: Broker) -> FastAPI:
    """Compliance's router under /compliance, with the composition root's error mapping in small."""
    api = FastAPI()
    api.state.broker = broker
    statuses = {ValidationError: 422, DomainError: 409, ConcurrencyError: 409, AggregateNotFound: 404}
    for error, code in statuses.items():

        async def handler(request: Request, exc: Exception, code: int = code) -> JSONResponse:
            return JSONResponse({"detail": str(exc), "field": getattr(exc, "field", None)}, status_code=code)

        api.add_exception_handler(error, handler)
    assert parts.router is not None
    api.include_router(parts.router(parts), prefix="/compliance")
    return api


@contextlib.asynccontextmanager
async def client(parts: ContextParts, broker: Broker) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=api_of(parts, broker))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


async def test_the_api_reviews_and_closes_an_investigation_and_maps_errors(
    store: Store, broker: Broker, parts: ContextParts
) -> None:
    await parts.application.handle(
        OpenInvestigation(license_id=ALICE_LICENSE, asset_id="a", buyer_id="b", used=5, allowed=3, source="licensing")
    )
    case = investigation_id_for(ALICE_LICENSE)
    async with client(parts, broker) as http:
        # Unknown ids are 404, for reads and commands alike
        assert (await http.get("/compliance/investigations/nope")).status_code == 404
        assert (await http.post("/compliance/investigations/nope/review", json={"reviewer": "rita"})).status_code == 404
        # Confirming without a review breaks an invariant: 409
        confirm = {"outcome": "confirmed", "reason": "seen it"}
        assert (await http.post(f"/compliance/investigations/{case}/close", json=confirm)).status_code == 409
        # An unknown outcome is a validation error naming the field
        wrong = await http.post(f"/compliance/investigations/{case}/close", json={"outcome": "maybe", "reason": "x"})
        # (refused by the documented schema: FastAPI's own 422, here without the root's error body)
        assert (wrong.status_code, wrong.json()["detail"][0]["loc"]) == (422, ["body", "outcome"])
        blank = await http.post(f"/compliance/investigations/{case}/review", json={"reviewer": " "})
        assert (blank.status_code, blank.json()["detail"][0]["loc"]) == (422, ["body", "reviewer"])

        reviewed = await http.post(
            f"/compliance/investigations/{case}/review", json={"reviewer": "rita"}, headers={"X-Correlation-ID": "c-1"}
        )
        assert reviewed.status_code == 200, reviewed.text
        assert reviewed.json()["investigation"]["status"] == "under_review"
        closed = await http.post(f"/compliance/investigations/{case}/close", json=confirm)
        assert closed.status_code == 200, closed.text

        read = (await http.get(f"/compliance/investigations/{case}")).json()
        assert (read["status"], read["outcome"], read["reviewer"], read["version"]) == ("closed", "confirmed", "rita", 3)
        # Closed twice: 409
        assert (await http.post(f"/compliance/investigations/{case}/close", json=confirm)).status_code == 409


async def test_the_api_lists_alerts(store: Store, broker: Broker, parts: ContextParts) -> None:
    await open_three_investigations(parts)
    await Projector(store, parts.projections).catch_up()
    async with client(parts, broker) as http:
        response = await http.get("/compliance/alerts", params={"limit": 10})
    assert response.status_code == 200
    assert [alert["license_id"] for alert in response.json()] == [BOB_LICENSE, ALICE_LICENSE]


async def test_the_api_accepts_every_partner_record_onto_the_feed_and_the_acl_judges_them(
    store: Store, broker: Broker, parts: ContextParts
) -> None:
    licensing = consumer_of(parts, LICENSING_EVENTS_CONSUMER)
    await publish_contracts(store, broker, purchase(ALICE_LICENSE))
    async with running(licensing) as task:
        await until(lambda: all_acked(store, licensing.name, purchase(ALICE_LICENSE).topic), task, "purchase known")

    ndjson = b"\n".join([json.dumps(report("N-1")).encode(), b"{broken", b"", json.dumps(report("N-1")).encode()])
    async with client(parts, broker) as http:
        as_array = await http.post(
            "/compliance/partner-feed", params={"partner": "acme"}, content=json.dumps([report("A-1"), "hello", 42])
        )
        as_lines = await http.post("/compliance/partner-feed", params={"partner": "acme"}, content=ndjson)
        bad_partner = await http.post("/compliance/partner-feed", params={"partner": "a cme"}, content=b"[]")

    assert as_array.status_code == 202, as_array.text
    assert as_array.json()["accepted"] == 3
    assert (as_lines.json()["accepted"], as_lines.json()["distinct"]) == (3, 2)
    assert (bad_partner.status_code, bad_partner.json()["detail"][0]["loc"]) == (422, ["query", "partner"])

    feed = consumer_of(parts, PARTNER_FEED_CONSUMER)
    async with running(feed) as task:
        await until(lambda: all_acked(store, feed.name, PARTNER_FEED_TOPIC), task, "the feed was applied")
    assert sorted(r.report_id for r in await partner_reports(store)) == ["A-1", "N-1"]
    reasons = {row.payload: row.error for row in await dead_letters(store, PARTNER_FEED_CONSUMER)}
    assert set(reasons) == {b'"hello"', b"42", b"{broken"}
    assert "record: is a JSON string, not an object" in reasons[b'"hello"']
    assert "record: is a JSON number, not an object" in reasons[b"42"]
    assert "not valid JSON" in reasons[b"{broken"]


def test_a_body_that_is_not_one_json_array_is_read_as_ndjson_lines() -> None:
    assert split_records(b'[{"a": 1}, [2]]') == [b'{"a":1}', b"[2]"]
    assert split_records(b'[{"a": 1}\n{"b": 2}\n') == [b'[{"a": 1}', b'{"b": 2}']
    assert split_records(b"  \n") == []
