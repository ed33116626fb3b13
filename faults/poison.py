"""Poison: bad messages put straight onto the broker, and bad commands sent through Application.handle.

At the broker each kind must end parked in the consumer's dead letters with a reason; through the
API each must be refused with a typed, explanatory error and commit nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import msgspec

from tidings import TidingsError
from tidings.brokers import Broker, OutgoingMessage, open_broker
from tidings.brokers.headers import envelope_to_headers
from tidings.messaging import Envelope, MessageContext, new_id, utc_now
from tidings.messaging.partitioning import partition_of
from tidings.store import Store

from faults.model import TENANT, TOPIC, Tick, Untick, make_app
from faults.plan import BROKER_POISON

#: Over the application's and the consumer's 256 KiB limit, under every broker's own (NATS: 1 MiB).
OVERSIZED = 300 * 1024


@contextlib.asynccontextmanager
async def publisher(url: str) -> AsyncIterator[Broker]:
    """A broker client of the harness's own, for injecting messages."""
    broker = await open_broker(url)
    try:
        yield broker
    finally:
        await broker.close()


def _message(kind: str) -> OutgoingMessage:
    if kind not in BROKER_POISON:
        raise ValueError(f"unknown poison {kind!r}; one of {', '.join(BROKER_POISON)}")
    key = f"poison-{kind}-{new_id()[-8:]}"
    envelope = Envelope(
        event_id=new_id(), event_type=TOPIC, schema_version=1, occurred_at=utc_now(), aggregate_type="Ticker",
        aggregate_id=key, aggregate_version=1, correlation_id=new_id(), causation_id=new_id(), tenant=TENANT, source="intruder",
    )  # fmt: skip
    body: bytes = msgspec.json.encode({"key": key, "n": 1, "cmd_id": f"poison-{envelope.event_id}"})
    if kind == "malformed-json":
        body = body[: len(body) // 2]
    elif kind == "unknown-type":
        envelope = msgspec.structs.replace(envelope, event_type="faults.Exploded")
    elif kind == "incompatible-version":
        envelope = msgspec.structs.replace(envelope, schema_version=7)
    elif kind == "oversized":
        body = msgspec.json.encode({"key": key, "n": 1, "cmd_id": f"poison-{envelope.event_id}", "padding": "x" * OVERSIZED})
    elif kind == "wrong-tenant":
        envelope = msgspec.structs.replace(envelope, tenant="intruder")
    headers = dict(envelope_to_headers(msgspec.json.encode(envelope)))
    if kind == "broken-envelope":
        headers["tidings-occurred_at"] = "yesterday-ish"
        headers["tidings-schema_version"] = "one"
    return OutgoingMessage(TOPIC, key, partition_of(key), envelope.event_id, headers, body)


async def at_broker(broker: Broker, kind: str) -> tuple[str, str]:
    """Publish one poisoned message of ``kind`` on the workload's topic; its (event id, key)."""
    message = _message(kind)
    [error] = await broker.publish([message])
    if error is not None:
        raise RuntimeError(f"the broker refused the {kind} poison itself: {error}")
    return message.event_id, message.key


async def through_api(store: Store, kind: str) -> str | None:
    """Send one bad command of ``kind`` through Application.handle; the refusal's text, or None if it went through."""
    app = make_app(store)
    context = MessageContext(tenant=TENANT)
    key = f"poison-api-{kind}-{new_id()[-8:]}"
    command: object
    if kind == "blank-key":
        command = Tick(key="   ", cmd_id=f"poison-{new_id()}")
    elif kind == "wrong-field-type":
        command = Tick(key=key, cmd_id=f"poison-{new_id()}", fail="yes")  # type: ignore[arg-type]
    elif kind == "unknown-command":
        command = Untick(key=key)
    elif kind == "oversized":
        command = Tick(key=key, cmd_id=f"poison-{new_id()}", padding="x" * OVERSIZED)
    else:
        raise ValueError(f"unknown poison {kind!r}")
    try:
        await app.handle(command, context=context)  # type: ignore[arg-type]
    except TidingsError as exc:
        text = f"{type(exc).__name__}: {exc}"
        return text if str(exc).strip() else None
    return None
