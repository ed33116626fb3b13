"""A command run on behalf of a message: message → command → events, stored and shown by ``tidings trace``."""

from __future__ import annotations

import asyncio
import io

import msgspec
from rich.console import Console

from model import LicensePurchaseConfirmed, OfferLicense, PurchaseLicense, ReportUsage, make_app
from tidings import CommandResult, Envelope
from tidings.brokers.local import LocalBroker
from tidings.cli.trace import collect_trace, trace_tree
from tidings.messaging import new_id
from tidings.runtime import Consumer, HandlerContext, Relay
from tidings.store import Store


async def test_a_command_from_a_consumer_is_caused_by_the_message_and_causes_its_events(store: Store) -> None:
    # Given a consumer that reports usage on each confirmed purchase, through the application
    app = make_app(store)
    broker = LocalBroker(store, poll_interval=0.02)
    consumer = Consumer("usage", store, broker, topics=["licensing"])
    ran: list[CommandResult] = []

    @consumer.handler(LicensePurchaseConfirmed)
    async def report(event: LicensePurchaseConfirmed, ctx: HandlerContext) -> None:
        ran.append(await ctx.handle(app, ReportUsage(license_id=event.license_id, units=1)))

    license_id = new_id()
    await app.handle(OfferLicense(license_id=license_id, product="Editor"))
    bought = await app.handle(PurchaseLicense(license_id=license_id, buyer="ada"))
    (confirmed,) = bought.published
    await Relay(store, broker).drain()

    # When the consumer applies the confirmation
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        async with asyncio.timeout(10):
            while consumer.stats.applied < 1:
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await task

    # Then the command's events are caused by the command, and the command by the message
    (command,) = ran
    assert command.command_id not in {confirmed.event_id, bought.command_id}
    journal = await store.read_correlation(bought.correlation_id)
    (usage,) = [msgspec.json.decode(e.envelope, type=Envelope) for e in journal if e.event_type == "UsageReported"]
    assert usage.causation_id == command.command_id
    assert usage.command_causation_id == confirmed.event_id
    assert usage.command_type == "ReportUsage"
    assert usage.correlation_id == bought.correlation_id

    # And the trace shows message → command → event
    trace = await collect_trace(store, bought.correlation_id)
    message_node = trace.nodes[confirmed.event_id]
    (command_node,) = [child for child in message_node.children if child.kind == "executed"]
    assert (command_node.event_id, command_node.event_type) == (command.command_id, "ReportUsage")
    assert [child.event_type for child in command_node.children] == ["UsageReported"]
    printed = io.StringIO()
    Console(file=printed, width=200, color_system=None).print(trace_tree(trace))
    assert f"command ReportUsage …{command.command_id[-8:]}" in printed.getvalue()


async def test_a_command_from_outside_causes_its_events_and_names_itself(store: Store) -> None:
    # Given / when a command arrives from outside (no message caused it)
    app = make_app(store)
    result = await app.handle(OfferLicense(license_id=new_id(), product="Editor"))
    # Then its events are caused by it, carry its type, and no cause of the command
    (row,) = await store.read_correlation(result.correlation_id)
    envelope = msgspec.json.decode(row.envelope, type=Envelope)
    assert envelope.causation_id == result.command_id
    assert (envelope.command_type, envelope.command_causation_id) == ("OfferLicense", None)
