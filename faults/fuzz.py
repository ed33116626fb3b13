"""Fuzzing consumers: garbage published straight onto a broker between good messages, and what became of each.

One run: a consumer (``on_dead="skip"``, so a bad message holds nothing back) reads a topic on one
broker into one store. Good messages — numbered 1, 2, 3… per key, some with non-UUID ids of
foreign producers — are published interleaved, on the same keys, with bad ones of every kind in
``KINDS`` and with spoiled messages drawn by hypothesis (fixed seed, bounded count). Then every
message is accounted for:

- every good message applied exactly once, each key in order (``lost``, ``duplicate_effects``,
  ``order_violations``);
- every bad message dead-lettered with a reason (``dead_lettered``), or refused by the broker at
  publish (``refused_at_publish``: e.g. the local log on PostgreSQL cannot hold a NUL) — never
  applied (``wrongly_applied``) and never gone without a trace (``silent_drops``);
- a valid message whose effect the handler's table refuses ("refused-effect") dead-lettered after
  its transaction failed twice the same way (the consumer's safety net under the header checks);
- no crash of the worker (``crashes``) and no hot loop: no transaction rolled back during a quiet
  window after everything settled (``hot_loops``), and few in all (``rollbacks``).

Dead letters are matched to what was sent by their payload bytes (kept raw; each bad payload
carries a nonce). ``python -m faults fuzz --json`` runs the long form on every broker and both
stores; tests/brokers/test_consumer_fuzz.py runs the short form.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec

from tidings import IntegrationEvent
from tidings.brokers.base import Broker, OutgoingMessage
from tidings.brokers.headers import envelope_to_headers
from tidings.messaging import Envelope, MessageRegistry, new_id, utc_now
from tidings.messaging.partitioning import partition_of
from tidings.runtime import Consumer, DeadLetters, HandlerContext, Retries
from tidings.runtime.backoff import Backoff
from tidings.runtime.incoming import HEADER_LIMITS
from tidings.store import Store

TOPIC = "fuzz.Counted"
#: The largest number the effects table takes.
MAX_N = 1_000_000
CONSUMER = "fuzz"

#: The kinds of bad message; "generated" ones are drawn by hypothesis and spoiled one to three ways.
KINDS = (
    "random-bytes",
    "truncated-json",
    "wrong-types",
    "missing-header",
    "oversized-header",
    "other-type-payload",
    "oversized-id",
    "unprintable-id",
    "nul-id",
    "nul-key",
    "nul-header",
    "reused-id",
    "refused-effect",
    "generated",
)
#: Headers without which there is no envelope. Not the event id: the Kafka adapter restores a missing
#: one from the broker-level id at publish, so the consumer would get a whole (good) message.
_REQUIRED = ("tidings-event_type", "tidings-schema_version", "tidings-occurred_at", "tidings-correlation_id")
_CONTROLS = ("\x00", "\t", "\n", "\r", "\x1b", "\x7f", "\u2028", "\x85")


class Counted(IntegrationEvent, name=TOPIC, version=1):
    """The n-th message of a key."""

    key: str
    n: int


class Labelled(IntegrationEvent, name="fuzz.Labelled", version=1):
    """Another type on the same topic, so one type can be sent with the other's payload."""

    label: str


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much one run sends."""

    keys: int = 6
    per_key: int = 10
    rounds: int = 2  # of every bad kind
    generated: int = 30
    quiet: float = 0.5  # seconds after settling in which no transaction may roll back
    timeout: float = 60.0


SHORT = Sizes()
LONG = Sizes(keys=20, per_key=60, rounds=15, generated=400, quiet=2.0, timeout=300.0)


@dataclass(slots=True)
class Sent:
    """One message handed to the broker, and what it is."""

    message: OutgoingMessage
    kind: str  # "good", "foreign-id" (good, with a non-UUID id) or one of KINDS
    refused: str = ""


@dataclass
class Figures:
    """What became of one run's messages."""

    broker: str
    store: str
    sent: Counter[str] = field(default_factory=Counter)
    refused_at_publish: Counter[str] = field(default_factory=Counter)
    dead_lettered: Counter[str] = field(default_factory=Counter)
    applied: int = 0
    good: int = 0
    lost: int = 0
    duplicate_effects: int = 0
    order_violations: int = 0
    wrongly_applied: int = 0
    silent_drops: int = 0
    reasonless: int = 0
    hot_loops: int = 0
    rollbacks: int = 0
    crashes: int = 0
    seconds: float = 0.0
    examples: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Whether every invariant held."""
        return not (
            self.lost or self.duplicate_effects or self.order_violations or self.wrongly_applied or self.silent_drops
            or self.reasonless or self.hot_loops or self.crashes
        )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the JSON line."""
        return {
            "broker": self.broker, "store": self.store, "sent": dict(self.sent), "refused_at_publish": dict(self.refused_at_publish),
            "dead_lettered": dict(self.dead_lettered), "applied": self.applied, "good": self.good, "lost": self.lost,
            "duplicate_effects": self.duplicate_effects, "order_violations": self.order_violations,
            "wrongly_applied": self.wrongly_applied, "silent_drops": self.silent_drops, "reasonless": self.reasonless,
            "hot_loops": self.hot_loops, "rollbacks": self.rollbacks, "crashes": self.crashes,
            "seconds": round(self.seconds, 2), "examples": self.examples[:5],
        }  # fmt: skip


# -- the consumer under test -----------------------------------------------------------------------


def effects_ddl(store: Store) -> str:
    """One row per applied message, in commit order."""
    serial = "BIGSERIAL PRIMARY KEY" if store.dialect == "postgresql" else "INTEGER PRIMARY KEY AUTOINCREMENT"
    # The CHECK is the handler's own table refusing a value: a "refused-effect" message (valid, with
    # n out of range) fails its transaction at the flush, the same way each time, on both stores.
    return (
        f"CREATE TABLE IF NOT EXISTS fuzz_effects (id {serial}, key TEXT NOT NULL, "
        f"n INTEGER NOT NULL CHECK (n BETWEEN -1 AND {MAX_N}), event_id TEXT NOT NULL)"
    )


def fuzz_consumer(store: Store, broker: Broker) -> Consumer:
    """The consumer the garbage is thrown at: Counted and Labelled recorded in fuzz_effects."""
    consumer = Consumer(
        CONSUMER, store, broker, registry=MessageRegistry([Counted, Labelled]), topics=[TOPIC], on_dead="skip",
        retries=Retries(immediate=1, delayed=2, backoff=Backoff(0.02, 0.05)), concurrency=4, batch_size=50,
    )  # fmt: skip

    @consumer.handler(Counted)
    async def count(event: Counted, ctx: HandlerContext) -> None:
        ctx.write("INSERT INTO fuzz_effects (key, n, event_id) VALUES (?, ?, ?)", (event.key, event.n, ctx.envelope.event_id))

    @consumer.handler(Labelled)
    async def label(event: Labelled, ctx: HandlerContext) -> None:
        ctx.write("INSERT INTO fuzz_effects (key, n, event_id) VALUES (?, ?, ?)", (f"label:{event.label}", -1, ctx.envelope.event_id))

    return consumer


# -- what is sent ----------------------------------------------------------------------------------


def _message(key: str, payload: bytes, *, event_type: str = TOPIC, event_id: str | None = None) -> OutgoingMessage:
    envelope = Envelope(
        event_id=event_id or new_id(), event_type=event_type, schema_version=1, occurred_at=utc_now(),
        aggregate_type="Counter", aggregate_id=key, correlation_id=new_id(), causation_id=new_id(), source="fuzz",
    )  # fmt: skip
    headers = envelope_to_headers(msgspec.json.encode(envelope))
    # The broker-level id is always fresh: NATS and the local log drop a repeated one themselves,
    # and a reused envelope id must reach the consumer to be caught there.
    return OutgoingMessage(TOPIC, key, partition_of(key), new_id(), headers, payload)


def _noise(rng: random.Random, size: int) -> str:
    return base64.b64encode(rng.randbytes(size))[:size].decode()


def _with(message: OutgoingMessage, **headers: str | None) -> OutgoingMessage:
    merged = dict(message.headers)
    for name, value in headers.items():
        name = f"tidings-{name}"
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    return replace(message, headers=merged)


def bad_message(kind: str, rng: random.Random, key: str, nonce: str, good_sent: Sequence[OutgoingMessage]) -> OutgoingMessage:
    """One bad message of ``kind`` on ``key``; its payload carries ``nonce`` (what its dead letter is found by)."""
    body = {"nonce": nonce, "key": key, "n": 0}
    payload = msgspec.json.encode(body)
    if kind == "random-bytes":
        return _message(key, b"\xff" + nonce.encode() + rng.randbytes(rng.randrange(1, 200)))
    if kind == "truncated-json":
        whole = msgspec.json.encode({**body, "pad": "p" * 40})
        cut = len(b'{"nonce":"') + len(nonce) + rng.randrange(2, len(whole) - len(nonce) - 12)
        return _message(key, whole[:cut])
    if kind == "wrong-types":
        return _message(key, msgspec.json.encode({"nonce": nonce, "key": rng.choice([17, None, ["k"]]), "n": rng.choice(["zero", None, {}])}))
    if kind == "missing-header":
        return _with(_message(key, payload), **{rng.choice(_REQUIRED).removeprefix("tidings-"): None})
    if kind == "oversized-header":
        name = rng.choice(sorted(HEADER_LIMITS)).removeprefix("tidings-")
        return _with(_message(key, payload), **{name: _noise(rng, rng.choice([10_000, 40_000]))})
    if kind == "other-type-payload":
        if rng.random() < 0.5:
            return _message(key, payload, event_type=Labelled.message_name)  # a Counted payload as a Labelled
        return _message(key, msgspec.json.encode({"nonce": nonce, "label": "x"}))  # a Labelled payload as a Counted
    if kind == "oversized-id":
        return _message(key, payload, event_id=_noise(rng, rng.choice([10_000, 40_000])))
    if kind == "unprintable-id":
        return _message(key, payload, event_id=f"legacy{rng.choice(_CONTROLS[1:])}{nonce}")
    if kind == "nul-id":
        return _message(key, payload, event_id=f"0190\x00{nonce}")
    if kind == "nul-key":
        return replace(_message(key, payload), key=f"{key}\x00{nonce}")
    if kind == "nul-header":
        name = rng.choice(["tenant", "source", "user_id", "aggregate_id", "causation_id"])
        return _with(_message(key, payload), **{name: f"x\x00{nonce}"})
    if kind == "refused-effect":
        return _message(key, msgspec.json.encode({"nonce": nonce, "key": key, "n": MAX_N + 1 + rng.randrange(1000)}))
    if kind == "reused-id":
        original = rng.choice([m for m in good_sent if m.key == key])
        return _message(key, payload, event_id=original.headers["tidings-event_id"])
    raise ValueError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")


def generated_spoils(count: int, seed: int) -> list[list[tuple[str, Any]]]:
    """``count`` lists of one to three spoils, drawn by hypothesis with ``seed`` (the same every time)."""
    from hypothesis import HealthCheck, Phase, given, settings, strategies as st
    from hypothesis import seed as fixed_seed

    control = st.sampled_from(_CONTROLS)
    unprintable = st.builds(lambda a, c, b: f"{a}{c}{b}", st.text(max_size=12), control, st.text(max_size=12))
    field_names = st.sampled_from(sorted(HEADER_LIMITS))
    spoil = st.one_of(
        st.tuples(st.just("drop"), st.sampled_from(_REQUIRED)),
        st.tuples(st.just("oversize"), st.tuples(field_names, st.integers(1, 30_000))),
        st.tuples(st.just("unprintable"), st.tuples(field_names, unprintable)),
        st.tuples(st.just("schema_version"), st.one_of(
            st.integers(2**31, 2**70).map(str), st.integers(-(2**40), -1).map(str), st.text(max_size=8).map(lambda t: f"v{t}"),
        )),  # fmt: skip
        st.tuples(st.just("occurred_at"), st.text(max_size=20).map(lambda t: f"not-a-date:{t}")),
        st.tuples(st.just("payload"), st.binary(max_size=120)),
        st.tuples(st.just("payload-json"), st.fixed_dictionaries({
            "key": st.one_of(st.integers(), st.none(), st.booleans(), st.lists(st.integers(), max_size=3)),
            "n": st.one_of(st.text(max_size=10), st.none(), st.booleans(), st.lists(st.text(max_size=3), max_size=3)),
        })),  # fmt: skip
        st.tuples(st.just("key"), st.one_of(unprintable, st.integers(513, 20_000).map(lambda n: "k" * n))),
    )
    drawn: list[list[tuple[str, Any]]] = []

    @fixed_seed(seed)
    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(st.lists(spoil, min_size=1, max_size=3))
    def collect(spoils: list[tuple[str, Any]]) -> None:
        drawn.append(spoils)

    collect()
    return drawn[:count]


def spoiled(spoils: list[tuple[str, Any]], key: str, nonce: str, rng: random.Random) -> OutgoingMessage:
    """A good message of ``key`` spoiled as hypothesis drew it (each spoil alone makes it bad)."""
    message = _message(key, msgspec.json.encode({"nonce": nonce, "key": key, "n": 0}))
    for what, arg in spoils:
        if what == "drop":
            message = _with(message, **{arg.removeprefix("tidings-"): None})
        elif what == "oversize":
            name, extra = arg
            message = _with(message, **{name.removeprefix("tidings-"): _noise(rng, HEADER_LIMITS[name] + extra)})
        elif what == "unprintable":
            name, value = arg
            message = _with(message, **{name.removeprefix("tidings-"): value})
        elif what in ("schema_version", "occurred_at"):
            message = _with(message, **{what: arg})
        elif what == "payload":
            message = replace(message, payload=b"\xff" + nonce.encode() + arg)
        elif what == "payload-json":
            message = replace(message, payload=msgspec.json.encode({"nonce": nonce, **arg}))
        elif what == "key":
            message = replace(message, key=arg)
    return message


def plan_messages(seed: int, sizes: Sizes) -> list[Sent]:
    """Good and bad messages, interleaved on the same keys, all from ``seed``."""
    rng = random.Random(seed)
    keys = [f"key-{i}" for i in range(sizes.keys)]
    good: dict[str, list[Sent]] = {}
    for key in keys:
        for n in range(1, sizes.per_key + 1):
            payload = msgspec.json.encode({"key": key, "n": n})
            if rng.random() < 0.1:  # a foreign producer's id: not a UUID, but printable and bounded
                good.setdefault(key, []).append(Sent(_message(key, payload, event_id=f"legacy:{key}:{n}"), "foreign-id"))
            else:
                good.setdefault(key, []).append(Sent(_message(key, payload), "good"))
    bad_kinds = [kind for kind in KINDS if kind != "generated" for _ in range(sizes.rounds)]
    spoils = generated_spoils(sizes.generated, seed)
    # Each bad message goes after a random good one of a random key (a reused id after the id it reuses).
    slots: dict[str, list[list[Sent]]] = {key: [[] for _ in range(sizes.per_key)] for key in keys}
    nonce = 0
    for kind in bad_kinds + ["generated"] * len(spoils):
        key = rng.choice(keys)
        after = rng.randrange(sizes.per_key)
        nonce += 1
        tag = f"fz{seed}-{nonce:05d}"
        if kind == "generated":
            message = spoiled(spoils.pop(0), key, tag, rng)
        else:
            message = bad_message(kind, rng, key, tag, [s.message for s in good[key][: after + 1]])
        slots[key][after].append(Sent(message, kind))
    lanes = {key: [item for n in range(sizes.per_key) for item in (good[key][n], *slots[key][n])] for key in keys}
    # Interleave the keys' lanes at random, keeping each lane's order.
    order: list[Sent] = []
    while lanes:
        key = rng.choice(sorted(lanes))
        order.append(lanes[key].pop(0))
        if not lanes[key]:
            del lanes[key]
    return order


# -- one run ---------------------------------------------------------------------------------------


async def publish_all(broker: Broker, sent: Sequence[Sent]) -> None:
    """Publish in order; what the broker refuses is marked (a batch that raises is retried one by one)."""
    for start in range(0, len(sent), 100):
        chunk = sent[start : start + 100]
        try:
            results = await broker.publish([s.message for s in chunk])
        except Exception:
            results = []
            for item in chunk:
                try:
                    [result] = await broker.publish([item.message])
                except Exception as exc:
                    result = exc
                results.append(result)
        for item, result in zip(chunk, results, strict=True):
            if result is not None:
                item.refused = f"{type(result).__name__}: {result}"[:200]


async def run_once(
    store: Store, make_broker: Callable[[], Awaitable[Broker]], *, broker_name: str, seed: int, sizes: Sizes = SHORT
) -> Figures:
    """Throw ``plan_messages(seed)`` at a consumer on ``store`` through the broker; what became of each message."""
    figures = Figures(broker=broker_name, store=store.dialect)
    started = time.monotonic()
    await store.run(effects_ddl(store))
    sent = plan_messages(seed, sizes)
    consumer = fuzz_consumer(store, await make_broker())
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(consumer.run(stop))
    try:
        deadline = time.monotonic() + 30
        while not consumer.subscribed and not task.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await publish_all(await make_broker(), sent)
        expected = sum(1 for s in sent if not s.refused)
        deadline = time.monotonic() + sizes.timeout
        while time.monotonic() < deadline and not task.done():
            if consumer.in_flight == 0 and await _accounted(store) >= expected:
                break
            await asyncio.sleep(0.05)
        rollbacks = consumer.stats.rollbacks
        await asyncio.sleep(sizes.quiet)  # a window to count rollbacks in: a hot loop shows as any at all
        figures.hot_loops = consumer.stats.rollbacks - rollbacks
        figures.rollbacks = consumer.stats.rollbacks
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
    if task.done() and not task.cancelled() and task.exception() is not None:
        figures.crashes = 1
        figures.examples.append(f"crash: {task.exception()!r}"[:300])
    await _account(store, sent, figures)
    figures.seconds = time.monotonic() - started
    return figures


async def _accounted(store: Store) -> int:
    applied = (await store.fetch("SELECT count(*) FROM fuzz_effects"))[0][0]
    dead = (await store.fetch("SELECT count(*) FROM tidings_dead_letters WHERE consumer = ?", (CONSUMER,)))[0][0]
    return int(applied) + int(dead)


async def _account(store: Store, sent: Sequence[Sent], figures: Figures) -> None:
    by_payload = {s.message.payload: s for s in sent}
    goods = [s for s in sent if s.kind in ("good", "foreign-id")]
    for item in sent:
        figures.sent[item.kind] += 1
        if item.refused:
            figures.refused_at_publish[item.kind] += 1
            if item.kind in ("good", "foreign-id"):
                figures.lost += 1
                figures.examples.append(f"a good message was refused at publish: {item.refused}")
    figures.good = len(goods)
    rows = await store.fetch("SELECT key, n FROM fuzz_effects ORDER BY id")
    expected_keys = {s.message.key for s in goods}
    seen: Counter[tuple[str, int]] = Counter()
    last: dict[str, int] = {}
    for key, n in rows:
        if key not in expected_keys or not 1 <= n <= MAX_N:
            figures.wrongly_applied += 1
            figures.examples.append(f"a bad message was applied: ({key[:40]!r}, {n})")
            continue
        figures.applied += 1
        seen[(key, n)] += 1
        if seen[(key, n)] > 1:
            figures.duplicate_effects += 1
        elif n < last.get(key, 0):
            figures.order_violations += 1
        last[key] = max(last.get(key, 0), n)
    figures.lost += sum(1 for s in goods if not s.refused and seen[(s.message.key, _n(s))] == 0)
    found: set[bytes] = set()
    for row in await DeadLetters(store).list(consumer=CONSUMER, statuses=("dead", "held"), limit=1_000_000):
        item = by_payload.get(row.payload)
        if item is None or item.kind in ("good", "foreign-id"):
            figures.examples.append(f"an unexpected dead letter: {row.error[:120]}")
            figures.lost += item is not None
            continue
        if row.payload in found:
            figures.examples.append(f"dead-lettered twice: {row.error[:120]}")
            continue
        found.add(row.payload)
        figures.dead_lettered[item.kind] += 1
        if not row.reason or not row.error:
            figures.reasonless += 1
    bad = [s for s in sent if s.kind not in ("good", "foreign-id") and not s.refused]
    figures.silent_drops = max(0, len(bad) - sum(figures.dead_lettered.values()) - figures.wrongly_applied)
    for item in bad:
        if item.message.payload not in found and len(figures.examples) < 10:
            figures.examples.append(f"no dead letter for {item.kind}: headers {_preview(item.message.headers)}")


def _n(sent: Sent) -> int:
    return int(msgspec.json.decode(sent.message.payload)["n"])


def _preview(headers: Any) -> str:
    text = repr({k: (v[:30] + "…" if isinstance(v, str) and len(v) > 30 else v) for k, v in dict(headers).items()})
    return text[:300]


# -- the long form: every broker, both stores ------------------------------------------------------

BROKERS = ("local", "nats", "rabbitmq", "redis", "kafka")


async def run_all(seed: int, *, long: bool, brokers: Sequence[str] = BROKERS, postgres_url: str, say: Callable[[str], None]) -> dict[str, Any]:
    """Every broker × SQLite and PostgreSQL, each on a private server of its own; the figures of each run and in all."""
    import shutil
    import tempfile
    import uuid
    from pathlib import Path

    from tidings.brokers import open_broker
    from tidings.brokers.local import LocalBroker
    from tidings.store import open_store

    from faults.servers import broker_server

    sizes = LONG if long else SHORT
    runs: list[Figures] = []
    for name in brokers:
        for dialect in ("sqlite", "postgresql"):
            root = Path(tempfile.mkdtemp(prefix="tidings-fuzz-"))
            root.chmod(0o755)
            server = None if name == "local" else broker_server(name, root)
            schema = f"fuzz_{uuid.uuid4().hex[:10]}"
            store = (
                await open_store(f"sqlite:///{root / 'fuzz.db'}") if dialect == "sqlite"
                else await open_store(postgres_url, schema=schema, migrate=True)
            )  # fmt: skip
            clients: list[Broker] = []

            async def make_broker() -> Broker:
                broker: Broker = LocalBroker(store, poll_interval=0.02) if server is None else await open_broker(server.url)
                clients.append(broker)
                return broker

            try:
                if server is not None:
                    say(f"starting a private {name} server")
                    await server.start()
                say(f"fuzzing the consumer through {name} on {dialect} (seed {seed})")
                figures = await run_once(store, make_broker, broker_name=name, seed=seed, sizes=sizes)
                runs.append(figures)
                say(
                    f"{name}/{dialect}: sent {sum(figures.sent.values())}, dead-lettered {sum(figures.dead_lettered.values())}, "
                    f"applied {figures.applied}/{figures.good}, hot loops {figures.hot_loops}, silent drops {figures.silent_drops}"
                    + ("" if figures.clean else f" — NOT CLEAN: {figures.examples[:3]}")
                )
            finally:
                for client in clients:
                    with contextlib.suppress(Exception):
                        await client.close()
                if dialect == "postgresql":
                    with contextlib.suppress(Exception):
                        await store.drop_schema()  # type: ignore[attr-defined]
                await store.close()
                if server is not None:
                    with contextlib.suppress(Exception):
                        await server.stop()
                shutil.rmtree(root, ignore_errors=True)
    total = Figures(broker="all", store="all")
    for figures in runs:
        for counter in ("sent", "refused_at_publish", "dead_lettered"):
            getattr(total, counter).update(getattr(figures, counter))
        for number in ("applied", "good", "lost", "duplicate_effects", "order_violations", "wrongly_applied", "silent_drops",
                       "reasonless", "hot_loops", "rollbacks", "crashes"):  # fmt: skip
            setattr(total, number, getattr(total, number) + getattr(figures, number))
        total.seconds += figures.seconds
    return {"scenario": "fuzz", "seed": seed, "long": long, "clean": all(f.clean for f in runs), "total": total.as_dict(),
            "runs": [f.as_dict() for f in runs]}  # fmt: skip
