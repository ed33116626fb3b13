"""The relay on both stores, with the local broker (a real durable log in the same database).

Failures are caused, not simulated: relay processes are killed with SIGKILL, payloads are made
too large for the broker, and a second relay is started against a file the first one holds.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from typer.testing import CliRunner

from support import POSTGRES_URL, StoreFactory
from relay_model import Tick, make_ticker_app
from tidings.brokers.base import OutgoingMessage
from tidings.brokers.local import LocalBroker
from tidings.cli import app as cli
from tidings.messaging import utc_now
from tidings.runtime import Relay
from tidings.runtime.ownership import SqliteOwnership
from tidings.store import Store
from tidings.store.outbox import Outbox


async def delivered_ticks(store: Store) -> dict[str, list[int]]:
    """Each ticker's numbers in the order the broker's log holds them."""
    rows = await store.fetch("SELECT key, payload FROM tidings_local_log ORDER BY position")
    ticks: dict[str, list[int]] = defaultdict(list)
    for key, payload in rows:
        ticks[key].append(json.loads(bytes(payload))["n"])
    return ticks


async def undelivered(store: Store) -> int:
    return int((await store.fetch("SELECT count(*) FROM tidings_outbox WHERE delivered_at IS NULL"))[0][0])


def store_url(store: Store) -> str:
    """A URL another process can open the same store with (PostgreSQL: in the same schema)."""
    if store.dialect == "postgresql":
        return f"{POSTGRES_URL}?options={quote(f'-c search_path={store.schema}')}"  # type: ignore[attr-defined]
    return store.url


def spawn_relay(url: str, log: Path) -> subprocess.Popen[bytes]:
    """A relay in a process of its own, as an operator would run it."""
    env = {**os.environ, "TIDINGS_DATABASE_URL": url, "TIDINGS_BROKER_URL": "local:", "COLUMNS": "200"}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "tidings.cli", "relay", "--batch-size", "50"], env=env, stdout=out, stderr=out)


async def test_every_committed_event_is_delivered_once_in_order_per_key(store: Store) -> None:
    # Given 12 tickers ticked 15 times each, interleaved
    app = make_ticker_app(store)
    for n in range(15):
        for k in range(12):
            await app.handle(Tick(ticker_id=f"t{k}"))

    # When a relay drains the outbox
    relay = Relay(store, LocalBroker(store), batch_size=40)
    await relay.drain()

    # Then every tick reached the broker once, in order per ticker, and every row is marked delivered
    ticks = await delivered_ticks(store)
    assert ticks == {f"t{k}": list(range(1, 16)) for k in range(12)}
    assert await undelivered(store) == 0


async def test_a_rolled_back_command_publishes_nothing(store: Store) -> None:
    # Given a command whose handler fails after recording its event
    app = make_ticker_app(store)
    await app.handle(Tick(ticker_id="ok"))
    with pytest.raises(RuntimeError):
        await app.handle(Tick(ticker_id="doomed", fail=True))

    # When the relay drains
    await Relay(store, LocalBroker(store)).drain()

    # Then only the committed command's event was published
    assert await delivered_ticks(store) == {"ok": [1]}


async def test_an_oversized_row_is_parked_its_key_waits_and_other_keys_flow(store: Store) -> None:
    # Given ticker "big" whose first event is over the broker's limit, then a small one; and ticker "small"
    app = make_ticker_app(store)
    await app.handle(Tick(ticker_id="big", padding="x" * 5000))
    await app.handle(Tick(ticker_id="big"))
    await app.handle(Tick(ticker_id="small"))
    await app.handle(Tick(ticker_id="small"))
    broker = LocalBroker(store, max_message_bytes=2000)

    # When the relay drains
    await Relay(store, broker).drain()

    # Then "small" flowed, "big" is held behind its parked row, and the park says why
    assert await delivered_ticks(store) == {"small": [1, 2]}
    status = await Outbox(store).status()
    assert (status.backlog, status.parked) == (2, 1)
    [(error,)] = await store.fetch("SELECT last_error FROM tidings_outbox WHERE parked_at IS NOT NULL")
    assert "over the broker's limit of 2000" in error

    # When the operator raises the limit and replays the parked row
    assert [r.outcome for r in await Outbox(store).replay(parked=True)] == ["released"]
    broker.max_message_bytes = 10_000
    await Relay(store, broker).drain()

    # Then "big" is delivered, in order
    assert (await delivered_ticks(store))["big"] == [1, 2]
    assert await undelivered(store) == 0


async def test_outbox_replay_says_per_row_what_it_did_and_a_replayed_row_reaches_the_broker_again(store: Store) -> None:
    # Given a delivered row, a parked row, a row not relayed yet, and an id with no row
    app = make_ticker_app(store)
    await app.handle(Tick(ticker_id="sent"))
    await app.handle(Tick(ticker_id="big", padding="x" * 5000))
    await Relay(store, LocalBroker(store, max_message_bytes=2000)).drain()
    await app.handle(Tick(ticker_id="waiting"))
    ids = {row.partition_key: row.id for row in await store.read_outbox()}
    sent_event = next(row.event_id for row in await store.read_outbox() if row.partition_key == "sent")

    # When the operator replays all four
    env = {"TIDINGS_DATABASE_URL": store_url(store), "COLUMNS": "400"}
    named = [str(ids["sent"]), str(ids["big"]), str(ids["waiting"]), "9999"]
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["outbox", "replay", *named], env=env)

    # Then it says what happened to each, and fails because one id has no row
    lines = result.output.splitlines()
    assert result.exit_code == 1, result.output
    assert lines[0].startswith(f"row {ids['sent']}: replayed — was delivered; the relay publishes event {sent_event} again (replay 1)")
    assert lines[1].startswith(f"row {ids['big']}: parked, released — the relay publishes event")
    assert "over the broker's limit of 2000" in lines[1]
    assert lines[2] == f"row {ids['waiting']}: still pending — not delivered yet, the relay publishes it anyway; nothing changed"
    assert lines[3].startswith("row 9999: not found — no outbox row has this id")

    # And the relay publishes the delivered row again with its event id unchanged (a second log entry)
    await Relay(store, LocalBroker(store)).drain()
    copies = await store.fetch("SELECT replay FROM tidings_local_log WHERE event_id = ? ORDER BY position", (sent_event,))
    assert [replay for (replay,) in copies] == [0, 1]
    assert await undelivered(store) == 0

    # And a relay's retry of that same publication is still stored once
    sent = next(row for row in await store.read_outbox() if row.id == ids["sent"])
    retry = OutgoingMessage(sent.topic, sent.partition_key, sent.partition, sent.event_id, {}, sent.payload, replay=1)
    assert await LocalBroker(store).publish([retry]) == [None]
    assert len(await store.fetch("SELECT 1 FROM tidings_local_log WHERE event_id = ?", (sent_event,))) == 2


async def test_a_key_parked_in_one_batch_is_held_in_the_batches_claimed_before_the_park_was_written(store: Store) -> None:
    # Given "big" whose first event is over the limit, then more of "big" and "small"; one row per batch,
    # so the relay claims big's second row while its first is still being parked (the claim runs ahead)
    app = make_ticker_app(store)
    await app.handle(Tick(ticker_id="big", padding="x" * 5000))
    await app.handle(Tick(ticker_id="big"))
    await app.handle(Tick(ticker_id="small"))
    await app.handle(Tick(ticker_id="big"))
    await app.handle(Tick(ticker_id="small"))

    # When the relay drains
    await Relay(store, LocalBroker(store, max_message_bytes=2000), batch_size=1).drain()

    # Then none of big's later rows overtook the parked one, and "small" flowed
    assert await delivered_ticks(store) == {"small": [1, 2]}
    assert (await Outbox(store).status()).parked == 1


async def test_delivered_rows_are_pruned_after_retention_in_bounded_batches(store: Store) -> None:
    # Given 30 delivered rows, 10 of them delivered long ago, and 5 undelivered rows
    app = make_ticker_app(store)
    for k in range(30):
        await app.handle(Tick(ticker_id=f"p{k}"))
    await Relay(store, LocalBroker(store)).drain()
    await store.run("UPDATE tidings_outbox SET delivered_at = ? WHERE id <= 10", (utc_now() - timedelta(days=30),))
    for k in range(5):
        await app.handle(Tick(ticker_id=f"q{k}"))

    # When pruning with a 7-day retention, 3 rows per statement
    pruned = await Outbox(store).prune(timedelta(days=7), batch=3)

    # Then exactly the 10 old delivered rows are gone; recent and undelivered rows stay
    assert pruned == 10
    assert await store.count("outbox") == 25
    assert await undelivered(store) == 5


async def test_a_running_relay_wakes_on_commit_not_on_its_poll_interval(store: Store) -> None:
    # Given a relay that would otherwise poll only every 30 s
    app = make_ticker_app(store)
    relay = Relay(store, LocalBroker(store), idle_wait=30.0, rebalance_interval=30.0)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        # Wait until it owns its partitions and is waiting for a commit (observably, not by a guess)
        deadline = time.monotonic() + 10
        while not relay.waiting and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert relay.waiting and relay.owned, "the relay never went idle"

        # When a command commits
        await app.handle(Tick(ticker_id="wake"))

        # Then its event is published long before the poll interval
        deadline = time.monotonic() + 5
        while await undelivered(store) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert await delivered_ticks(store) == {"wake": [1]}
    finally:
        stop.set()
        await task


async def test_a_second_relay_on_a_sqlite_file_waits_until_the_first_dies(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Given a relay process holding a SQLite store
    from tidings.store import open_store

    store = await open_store(f"sqlite:///{tmp_path / 'one.db'}")
    first = spawn_relay(store.url, tmp_path / "relay.log")
    try:
        lock = Path(f"{store.path}.relay.lock")  # type: ignore[attr-defined]
        deadline = time.monotonic() + 20
        while not (lock.exists() and lock.read_text().startswith("relay")) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

        # When a second relay asks for partitions
        second = SqliteOwnership(store, "second", 8)
        with caplog.at_level("WARNING", logger="tidings.relay"):
            assert await second.rebalance() == frozenset()

        # Then it says who holds the file and waits
        assert f"pid {first.pid}" in caplog.text and "one relay" in caplog.text

        # When the first is killed with SIGKILL, the second takes over
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert await second.rebalance() == frozenset(range(8))
        await second.release()
    finally:
        if first.poll() is None:
            first.kill()
        await store.close()


async def test_killing_relays_mid_stream_loses_nothing_and_keeps_order(
    postgres_store_factory: StoreFactory, tmp_path: Path
) -> None:
    # Given two relay processes on one PostgreSQL outbox (SQLite has one relay per file, tested above)
    store = await postgres_store_factory()
    app = make_ticker_app(store)
    url = store_url(store)
    relays = [spawn_relay(url, tmp_path / f"relay{i}.log") for i in range(2)]
    try:
        # When one relay is killed with SIGKILL a third of the way through, and a new one started at two thirds
        for i in range(600):
            await app.handle(Tick(ticker_id=f"k{i % 20}"))
            if i == 200:
                relays[0].send_signal(signal.SIGKILL)
            if i == 400:
                relays.append(spawn_relay(url, tmp_path / "relay2.log"))
        deadline = time.monotonic() + 60
        while await undelivered(store) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)

        # Then every committed tick was delivered, and each ticker's ticks are in order
        logs = "\n".join(p.read_text() for p in tmp_path.glob("relay*.log"))
        assert await undelivered(store) == 0, logs
        ticks = await delivered_ticks(store)
        assert ticks == {f"k{k}": list(range(1, 31)) for k in range(20)}, logs
    finally:
        for relay in relays:
            if relay.poll() is None:
                relay.send_signal(signal.SIGTERM)
        for relay in relays:
            try:
                relay.wait(10)
            except subprocess.TimeoutExpired:
                relay.kill()


async def test_relays_of_two_schemas_in_one_database_each_own_every_partition_of_their_own() -> None:
    # Given two stores in two schemas of the same PostgreSQL database (two deployments side by side)
    # Found by the fault harness: advisory locks are database-wide, and keyed by partition alone a
    # relay of one schema held every partition of the other, whose outbox then never drained.
    from support import require_service
    from tidings.store import open_store

    require_service("PostgreSQL", "127.0.0.1", 5432)
    schemas = [f"t_{os.urandom(6).hex()}" for _ in range(2)]
    stores = [await open_store(POSTGRES_URL, schema=schema, migrate=True) for schema in schemas]
    first, second = (Relay(s, LocalBroker(s)) for s in stores)
    try:
        # When the first schema's relay takes its partitions, then the second schema's relay rebalances
        assert len(await first.ownership.rebalance()) == 32
        owned = await second.ownership.rebalance()

        # Then the second owns all of its own schema's partitions too, and its outbox is published
        assert len(owned) == 32
        app = make_ticker_app(stores[1])
        await app.handle(Tick(ticker_id="k"))
        await second.drain(timeout=10)
        assert await undelivered(stores[1]) == 0
    finally:
        await first.ownership.release()
        await second.ownership.release()
        for store in stores:
            await store.drop_schema()  # type: ignore[attr-defined]
            await store.close()


async def test_commits_notify_only_while_a_relay_waits(postgres_store_factory: StoreFactory) -> None:
    # NOTIFY serialises commits database-wide (migration 0006), so only an idle relay may ask for it.
    store = await postgres_store_factory()
    app = make_ticker_app(store)
    listener = await store.dedicated_connection()  # type: ignore[attr-defined]
    relay = Relay(store, LocalBroker(store), idle_wait=30.0, rebalance_interval=30.0)
    stop = asyncio.Event()
    try:
        await listener.execute("LISTEN tidings_outbox")

        async def notifications(within: float) -> int:
            got = 0
            try:
                async for _ in listener.notifies(timeout=within):
                    got += 1
            except TimeoutError:
                pass
            return got

        # Given no relay running: commits send no notification
        await app.handle(Tick(ticker_id="quiet"))
        assert await notifications(0.3) == 0

        # When a relay has drained the outbox and waits
        task = asyncio.create_task(relay.run(stop))
        deadline = time.monotonic() + 10
        while not await store.fetch("SELECT 1 FROM tidings_relays WHERE waiting") and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert await undelivered(store) == 0

        # Then the next commit notifies and wakes it long before its 30 s poll
        await app.handle(Tick(ticker_id="loud"))
        assert await notifications(2.0) >= 1
        deadline = time.monotonic() + 5
        while await undelivered(store) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert await delivered_ticks(store) == {"quiet": [1], "loud": [1]}
        stop.set()
        await task
    finally:
        stop.set()
        await listener.close()
