"""OpenTelemetry across the outbox hop, with the SDK's in-memory exporter: what is traced, when, and what is not."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from model import LicensePurchaseConfirmed, LicensePurchased, OfferLicense, PurchaseLicense, ReportUsage, make_app
from telemetry_support import Sdk, installed_sdk
from tidings import Envelope
from tidings.brokers.local import LocalBroker
from tidings.messaging import new_id
from tidings.runtime import Consumer, HandlerContext, Projection, Projector, Relay, handles
from tidings.store import Store
from tidings.telemetry import semconv as sc
from tidings.runtime.flow_gauges import FlowGauges


def traceparent(span: ReadableSpan) -> str:
    return f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-{int(span.context.trace_flags):02x}"


def one(spans: tuple[ReadableSpan, ...], operation: str, **attributes: str) -> ReadableSpan:
    found = [
        s for s in spans
        if s.attributes.get(sc.MESSAGING_OPERATION_TYPE) == operation
        and all(s.attributes.get(k.replace("_", ".")) == v for k, v in attributes.items())
    ]
    assert len(found) == 1, f"{len(found)} {operation} spans with {attributes}: {[s.name for s in spans]}"
    return found[0]


async def stored_envelopes(store: Store) -> list[Envelope]:
    rows = await store.fetch("SELECT envelope FROM tidings_outbox ORDER BY id")
    # SQLite gives the JSON text, PostgreSQL the decoded jsonb.
    return [
        msgspec.convert(row[0], Envelope) if isinstance(row[0], dict) else msgspec.json.decode(row[0], type=Envelope)
        for row in rows
    ]


async def run_until_applied(consumer: Consumer, count: int, dead: int = 0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        async with asyncio.timeout(10):
            while consumer.stats.applied < count or consumer.stats.dead < dead:
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await task


async def test_the_trace_context_is_captured_when_the_row_is_written_not_when_the_relay_runs(store: Store) -> None:
    app = make_app(store)
    license_id = new_id()
    with installed_sdk() as sdk:
        # Given a purchase committed inside a caller's span
        tracer = trace.get_tracer("test")
        with tracer.start_as_current_span("caller") as caller:
            await app.handle(OfferLicense(license_id=license_id, product="Editor"))
            bought = await app.handle(PurchaseLicense(license_id=license_id, buyer="ada"))
        (confirmed,) = bought.published

        # When a relay publishes it later, inside some unrelated span of its own process
        with tracer.start_as_current_span("an operator's unrelated span") as unrelated:
            await Relay(store, LocalBroker(store)).drain()
        spans = sdk.finished()

    # Then the create span is the caller's descendant, PRODUCER, and its traceparent is in the row
    create = one(spans, "create", messaging_message_id=confirmed.event_id)
    assert create.kind is SpanKind.PRODUCER and create.context.trace_id == caller.get_span_context().trace_id
    assert create.attributes[sc.MESSAGING_MESSAGE_CONVERSATION_ID] == bought.correlation_id
    assert create.attributes[sc.TIDINGS_AGGREGATE_ID] == license_id
    assert confirmed.traceparent == traceparent(create)
    assert traceparent(create) in {e.traceparent for e in await stored_envelopes(store)}
    # And the send span is a root linked to it, never a child of whatever ran the relay
    send = one(spans, "send")
    assert send.kind is SpanKind.PRODUCER and send.parent is None
    assert send.context.trace_id != unrelated.get_span_context().trace_id
    assert create.context.span_id in {link.context.span_id for link in send.links}
    assert send.attributes[sc.MESSAGING_SYSTEM] == "tidings.local"
    # And no payload value is an attribute of any span (the buyer is in the payload)
    assert not any("ada" == str(v) for s in spans for v in s.attributes.values())


async def test_a_command_handled_from_a_consumer_continues_the_trace_of_the_message(store: Store) -> None:
    app = make_app(store)
    broker = LocalBroker(store, poll_interval=0.02)
    consumer = Consumer("usage", store, broker, topics=["licensing"])

    @consumer.handler(LicensePurchaseConfirmed)
    async def report(event: LicensePurchaseConfirmed, ctx: HandlerContext) -> None:
        await ctx.handle(app, ReportUsage(license_id=event.license_id, units=1))

    license_id = new_id()
    with installed_sdk() as sdk:
        await app.handle(OfferLicense(license_id=license_id, product="Editor"))
        bought = await app.handle(PurchaseLicense(license_id=license_id, buyer="ada"))
        (confirmed,) = bought.published
        await Relay(store, broker).drain()
        await run_until_applied(consumer, 1)
        spans = sdk.finished()

    # The consumer's process span links to the message's create span ...
    create = one(spans, "create", messaging_message_id=confirmed.event_id)
    process = one(spans, "process", messaging_message_id=confirmed.event_id)
    assert process.kind is SpanKind.CONSUMER
    assert [link.context.span_id for link in process.links] == [create.context.span_id]
    assert process.attributes[sc.MESSAGING_CONSUMER_GROUP_NAME] == "usage"
    assert process.attributes[sc.MESSAGING_DESTINATION_NAME] == "licensing"
    assert process.attributes[sc.MESSAGING_MESSAGE_CONVERSATION_ID] == bought.correlation_id
    # ... and the command the handler ran is its child
    (command,) = [s for s in spans if s.attributes.get(sc.TIDINGS_COMMAND_TYPE) == "ReportUsage"]
    assert command.parent is not None and command.parent.span_id == process.context.span_id


async def test_without_an_sdk_no_span_is_made_and_no_traceparent_is_stored(store: Store) -> None:
    app = make_app(store)
    license_id = new_id()
    await app.handle(OfferLicense(license_id=license_id, product="Editor"))
    bought = await app.handle(PurchaseLicense(license_id=license_id, buyer="ada"))
    assert [e.traceparent for e in bought.published] == [None]
    assert [e.traceparent for e in await stored_envelopes(store)] == [None]


class Buyers(Projection, name="buyers"):
    """Who bought each license: a read model whose lag the gauges report."""

    tables = {"buyers": "CREATE TABLE {buyers} (license_id TEXT PRIMARY KEY, buyer TEXT NOT NULL)"}

    @handles
    def purchased(self, event: LicensePurchased, envelope: Envelope) -> None:
        self.execute("INSERT INTO {buyers} (license_id, buyer) VALUES (?, ?)", (envelope.aggregate_id, event.buyer))


def points(sdk: Sdk, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
    """The metric's data points now: attributes → value (a sum, a gauge value, or a histogram's count)."""
    data = sdk.metrics.get_metrics_data()
    found: dict[tuple[tuple[str, Any], ...], Any] = {}
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        value = point.count if hasattr(point, "bucket_counts") else point.value
                        found[tuple(sorted(point.attributes.items()))] = value
    return found


async def test_metrics_count_what_moved_and_gauge_what_waits_in_the_store(store: Store) -> None:
    app = make_app(store)
    broker = LocalBroker(store, poll_interval=0.02)
    consumer = Consumer("usage", store, broker, topics=["licensing"], not_retryable=(ValueError,))

    @consumer.handler(LicensePurchaseConfirmed)
    async def confirm(event: LicensePurchaseConfirmed, ctx: HandlerContext) -> None:
        if event.buyer == "mallory":
            raise ValueError("mallory's purchases are refused")

    with installed_sdk() as sdk:
        gauges = FlowGauges(store, projector=Projector(store, [Buyers(registry=app.registry)]))
        await gauges.projector.prepare()  # type: ignore[union-attr]
        # Given three purchases committed and not yet relayed
        for buyer in ("ada", "bob", "mallory"):
            license_id = new_id()
            await app.handle(OfferLicense(license_id=license_id, product="Editor"))
            await app.handle(PurchaseLicense(license_id=license_id, buyer=buyer))
        await gauges.refresh()
        # Then the outbox gauges show them waiting, per partition, with an age
        assert sum(points(sdk, "tidings.outbox.backlog").values()) == 3
        ages = points(sdk, "tidings.outbox.oldest_undelivered.age")
        assert ages and all(age >= 0 for age in ages.values())
        assert points(sdk, "tidings.projection.lag.events") == {((sc.TIDINGS_PROJECTION, "buyers"),): 6}

        # When the relay sends them and the consumer applies two and dead-letters one
        await Relay(store, broker).drain()
        await run_until_applied(consumer, 2, dead=1)
        await gauges.projector.catch_up()  # type: ignore[union-attr]
        await gauges.refresh()

        # Then the counters say what moved, and the gauges what is left
        topic = ((sc.MESSAGING_DESTINATION_NAME, "licensing"), (sc.MESSAGING_SYSTEM, "tidings.local"))
        assert points(sdk, "messaging.client.sent.messages") == {topic: 3}
        by_consumer = tuple(sorted((*topic, (sc.MESSAGING_CONSUMER_GROUP_NAME, "usage"))))
        assert points(sdk, "messaging.client.consumed.messages") == {by_consumer: 2}
        assert points(sdk, "messaging.process.duration") == {by_consumer: 2}
        assert sum(points(sdk, "tidings.outbox.backlog").values()) == 0
        assert points(sdk, "tidings.consumer.dead_letters") == {((sc.MESSAGING_CONSUMER_GROUP_NAME, "usage"),): 1}
        assert points(sdk, "tidings.projection.lag.events") == {((sc.TIDINGS_PROJECTION, "buyers"),): 0}


async def test_a_projector_batch_is_a_span_linked_to_the_commands_that_recorded_its_events(store: Store) -> None:
    app = make_app(store)
    projector = Projector(store, [Buyers(registry=app.registry)])
    with installed_sdk() as sdk:
        await projector.prepare()
        license_id = new_id()
        await app.handle(OfferLicense(license_id=license_id, product="Editor"))
        await app.handle(PurchaseLicense(license_id=license_id, buyer="ada"))
        await projector.catch_up()
        spans = sdk.finished()
    (purchase,) = [s for s in spans if s.attributes.get(sc.TIDINGS_COMMAND_TYPE) == "PurchaseLicense"]
    (batch,) = [s for s in spans if s.attributes.get(sc.TIDINGS_PROJECTION) == "buyers"]
    assert batch.kind is SpanKind.CONSUMER and batch.parent is None
    assert purchase.context.span_id in {link.context.span_id for link in batch.links}
    assert batch.attributes[sc.MESSAGING_BATCH_MESSAGE_COUNT] >= 1
