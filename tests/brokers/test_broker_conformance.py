"""What every broker must do, checked against a real server: the broker conformance suite."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections import defaultdict
from collections.abc import Sequence

import pytest

from broker_server import BrokerServer
from tidings.brokers.base import Broker, BrokerUnavailable, Delivery, MessageRejected, OutgoingMessage
from tidings.messaging import new_id

PARTITIONS = 4


def topic() -> str:
    """A topic of this test's own, so tests never see each other's messages on a shared server."""
    return f"t{uuid.uuid4().hex[:10]}"


def message(topic_name: str, key: str, seq: int, payload: bytes | None = None) -> OutgoingMessage:
    event_id = new_id()
    return OutgoingMessage(
        topic=topic_name,
        key=key,
        partition=hash(key) % PARTITIONS,
        event_id=event_id,
        headers={
            "tidings-event_id": event_id,
            "tidings-event_type": "test.Numbered",
            "tidings-correlation_id": f"corr-{key}",
            "tidings-seq": str(seq),
            "tidings-unicode": "café ✓",
        },
        payload=payload if payload is not None else f'{{"key":"{key}","seq":{seq}}}'.encode(),
    )


async def publish_all(broker: Broker, messages: Sequence[OutgoingMessage]) -> None:
    results = await broker.publish(messages)
    failures = [r for r in results if r is not None]
    assert not failures, f"publish failed: {failures[:3]}"


async def receive(subscription, count: int, timeout: float = 20.0, ack: bool = True) -> list[Delivery]:  # type: ignore[no-untyped-def]
    """The next ``count`` deliveries (acked unless told otherwise), or fail after ``timeout`` seconds."""
    received: list[Delivery] = []

    async def take() -> None:
        async for delivery in subscription:
            received.append(delivery)
            if ack:
                await delivery.ack()
            if len(received) >= count:
                return

    try:
        await asyncio.wait_for(take(), timeout)
    except TimeoutError:
        pytest.fail(f"received {len(received)} of {count} messages within {timeout} s")
    return received


async def test_a_message_round_trips_with_payload_and_headers_intact(broker_server: BrokerServer) -> None:
    # Given a subscriber and one published message with unicode headers
    broker = await broker_server.broker()
    name = topic()
    subscription = await broker.subscribe([name], "g-roundtrip")
    sent = message(name, "lic-1", 1)
    await publish_all(broker, [sent])

    # When it is received
    [got] = await receive(subscription, 1)

    # Then everything the publisher said arrives as said
    assert got.topic == name
    assert got.key == "lic-1"
    assert got.event_id == sent.event_id
    assert got.payload == sent.payload
    for header, value in sent.headers.items():
        assert got.headers.get(header) == value, header
    await subscription.close()


async def test_a_replay_arrives_again_as_a_first_delivery_with_the_same_event_id(broker_server: BrokerServer) -> None:
    # Given a message that was published, received and acked
    broker = await broker_server.broker()
    name = topic()
    subscription = await broker.subscribe([name], "g-replay")
    sent = message(name, "lic-1", 1)
    await publish_all(broker, [sent])
    await receive(subscription, 1)

    # When an operator replays it (tidings outbox replay: the relay publishes it as replay 1)
    await publish_all(broker, [dataclasses.replace(sent, replay=1)])

    # Then it arrives again, with its event id unchanged, as the first delivery of a new publication
    [again] = await receive(subscription, 1)
    assert (again.event_id, again.attempt, again.payload) == (sent.event_id, 1, sent.payload)
    await subscription.close()


async def test_order_per_key_holds_across_partitions_and_batches(broker_server: BrokerServer) -> None:
    # Given 12 keys spread over the partitions, 25 numbered messages each, published in interleaved batches
    broker = await broker_server.broker()
    name = topic()
    subscription = await broker.subscribe([name], "g-order")
    keys = [f"key-{k}" for k in range(12)]
    messages = [message(name, key, seq) for seq in range(25) for key in keys]
    for start in range(0, len(messages), 60):
        await publish_all(broker, messages[start : start + 60])

    # When one consumer receives them all
    received = await receive(subscription, len(messages))

    # Then each key's messages arrive in the order they were published, none missing
    seen: dict[str, list[int]] = defaultdict(list)
    for delivery in received:
        seen[delivery.key].append(int(delivery.headers["tidings-seq"]))
    assert set(seen) == set(keys)
    for key in keys:
        assert seen[key] == list(range(25)), f"{key} arrived as {seen[key]}"
    await subscription.close()


async def test_every_group_gets_every_message(broker_server: BrokerServer) -> None:
    # Given two consumer groups on one topic
    broker = await broker_server.broker()
    name = topic()
    billing = await broker.subscribe([name], "g-billing")
    audit = await broker.subscribe([name], "g-audit")
    sent = [message(name, f"k{i}", i) for i in range(20)]

    # When 20 messages are published
    await publish_all(broker, sent)

    # Then each group receives all 20
    for subscription in (billing, audit):
        got = await receive(subscription, 20)
        assert {d.event_id for d in got} == {m.event_id for m in sent}
        await subscription.close()


async def test_an_unacked_message_is_redelivered_after_the_consumer_dies(broker_server: BrokerServer) -> None:
    # Given a consumer that received 10 messages and acked only the first 4
    name = topic()
    publisher = await broker_server.broker()
    doomed = await broker_server.broker()
    subscription = await doomed.subscribe([name], "g-crash")
    sent = [message(name, "only-key", i) for i in range(10)]
    await publish_all(publisher, sent)
    got = await receive(subscription, 10, ack=False)
    for delivery in got[:4]:
        await delivery.ack()

    # When that consumer dies without acking the rest (its connection is gone)
    await doomed.close()

    # Then a new member of the group receives every unacked message again, in order
    survivor = await broker_server.broker()
    again = await survivor.subscribe([name], "g-crash")
    redelivered = await receive(again, 6, timeout=60)
    assert [d.event_id for d in redelivered] == [m.event_id for m in sent[4:]]
    await again.close()


async def test_a_nacked_message_comes_back_after_its_delay(broker_server: BrokerServer) -> None:
    # Given a received message
    broker = await broker_server.broker()
    name = topic()
    subscription = await broker.subscribe([name], "g-nack")
    sent = message(name, "k", 1)
    await publish_all(broker, [sent])
    [first] = await receive(subscription, 1, ack=False)

    # When it is nacked with a short delay
    await first.nack(delay=0.2)

    # Then it is delivered again, counted as a further attempt where the broker counts
    [second] = await receive(subscription, 1, timeout=30)
    assert second.event_id == sent.event_id
    assert second.attempt >= first.attempt
    await subscription.close()


async def test_an_oversized_message_is_rejected_and_the_rest_of_its_batch_is_published(broker_server: BrokerServer) -> None:
    # Given a batch whose middle message is over the broker's limit
    broker = await broker_server.broker()
    name = topic()
    subscription = await broker.subscribe([name], "g-big")
    batch = [
        message(name, "a", 1),
        message(name, "b", 1, payload=b"x" * (broker.max_message_bytes + 1)),
        message(name, "c", 1),
    ]

    # When it is published
    results = await broker.publish(batch)

    # Then only the big one failed, permanently, and the others arrive
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], MessageRejected), results[1]
    got = await receive(subscription, 2)
    assert {d.key for d in got} == {"a", "c"}
    await subscription.close()


async def test_a_broker_restart_loses_nothing_that_was_confirmed(broker_server: BrokerServer) -> None:
    await restart_loses_nothing_confirmed(broker_server, kill=False)


async def test_a_broker_killed_with_sigkill_loses_nothing_that_was_confirmed(durable_broker_server: BrokerServer) -> None:
    # Only servers that promise durability of what they confirmed run this (the Kafka-compatible test
    # server persists a second after confirming, so it is restarted gracefully only: see server_kafka.py).
    await restart_loses_nothing_confirmed(durable_broker_server, kill=True)


async def restart_loses_nothing_confirmed(server: BrokerServer, kill: bool) -> None:
    """Confirmed messages survive a restart of the server (a graceful one, or a SIGKILL with ``kill``)."""
    # Given 50 confirmed messages, then a server restart
    name = topic()
    broker = await server.broker()
    subscription = await broker.subscribe([name], "g-restart")
    before = [message(name, f"k{i % 5}", i) for i in range(50)]
    await publish_all(broker, before)
    if kill:
        # The group is being served when the server dies; the delivery is left unacked, so it must come again.
        await receive(subscription, 1, ack=False)
    await subscription.close()
    await server.restart(kill=kill)

    # When 50 more are published after it (retrying while the client reconnects)
    after = [message(name, f"k{i % 5}", 50 + i) for i in range(50)]
    publisher = await server.broker()
    pending = after
    for _ in range(60):
        results = await publisher.publish(pending)
        pending = [m for m, r in zip(pending, results, strict=True) if r is not None]
        if not pending:
            break
        assert all(isinstance(r, BrokerUnavailable) for r in results if r is not None)
        await asyncio.sleep(0.5)
    assert not pending, "the broker never came back"

    # Then the group receives all 100
    consumer = await server.broker()
    again = await consumer.subscribe([name], "g-restart")
    got = await receive(again, 100, timeout=60)
    assert {d.event_id for d in got} >= {m.event_id for m in before + after}
    await again.close()


async def test_the_w3c_traceparent_of_a_stored_envelope_arrives_under_its_standard_header_name(broker_server: BrokerServer) -> None:
    # Given an outbox row's envelope that recorded the span which created it
    from tidings.brokers.headers import envelope_to_headers, headers_to_envelope
    from tidings.messaging.envelope import Envelope, utc_now
    import msgspec

    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    event_id = new_id()
    envelope = Envelope(event_id=event_id, event_type="test.Traced", schema_version=1, occurred_at=utc_now(),
                        correlation_id="corr-traced", traceparent=traceparent)
    broker = await broker_server.broker()
    name = topic()
    subscription = await broker.subscribe([name], "g-traceparent")
    sent = OutgoingMessage(topic=name, key="k", partition=0, event_id=event_id,
                           headers=envelope_to_headers(msgspec.json.encode(envelope)), payload=b"{}")

    # When the relay publishes it and a consumer receives it
    await publish_all(broker, [sent])
    [got] = await receive(subscription, 1)

    # Then any OpenTelemetry-aware reader finds it as ``traceparent``, and tidings reads it back
    assert got.headers["traceparent"] == traceparent
    assert headers_to_envelope(got.headers).traceparent == traceparent
    await subscription.close()
