"""The relay against a real broker server that is down at start, and that stops mid-stream."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relay_model import Tick, make_ticker_app
from server_nats import NatsServer, _binary
from tidings.brokers.nats import from_url
from tidings.runtime import Relay
from tidings.store import Store, open_store


async def undelivered(store: Store) -> int:
    return int((await store.fetch("SELECT count(*) FROM tidings_outbox WHERE delivered_at IS NULL"))[0][0])


async def wait_until_drained(store: Store, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while await undelivered(store) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


async def received_ticks(server: NatsServer, count: int) -> list[tuple[str, int]]:
    broker = await server.broker()
    subscription = await broker.subscribe(["test.TickPublished"], "verify")
    got: list[tuple[str, int]] = []

    async def take() -> None:
        async for delivery in subscription:
            got.append((delivery.key, int(delivery.headers["tidings-aggregate_version"])))
            await delivery.ack()
            if len(got) >= count:
                return

    await asyncio.wait_for(take(), 30)
    await subscription.close()
    return got


async def test_a_relay_started_while_the_broker_is_down_waits_and_delivers_when_it_comes_up(tmp_path: Path) -> None:
    # Given committed commands and a broker server that is not running yet
    server = NatsServer(_binary(), tmp_path)
    store = await open_store(f"sqlite:///{tmp_path / 'down.db'}")
    app = make_ticker_app(store)
    for i in range(20):
        await app.handle(Tick(ticker_id=f"t{i % 4}"))
    env = {**os.environ, "TIDINGS_DATABASE_URL": store.url, "TIDINGS_BROKER_URL": server.url, "COLUMNS": "200"}
    log = tmp_path / "relay.log"
    with log.open("wb") as out:
        relay = subprocess.Popen([sys.executable, "-m", "tidings.cli", "relay"], env=env, stdout=out, stderr=out)
    try:
        # When the relay has reported that the broker is unavailable, and then the server starts
        deadline = time.monotonic() + 20
        while "broker unavailable" not in log.read_text() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert "broker unavailable" in log.read_text(), log.read_text()
        assert relay.poll() is None, log.read_text()
        assert await undelivered(store) == 20
        await server.start()

        # Then, without restarting the relay, everything is delivered, in order per key
        await wait_until_drained(store, 30)
        assert await undelivered(store) == 0, log.read_text()
        ticks = await received_ticks(server, 20)
        for key in {k for k, _ in ticks}:
            assert [v for k, v in ticks if k == key] == [1, 2, 3, 4, 5]
    finally:
        relay.terminate()
        relay.wait(10)
        await server.close()
        await store.close()


async def test_a_broker_that_stops_mid_stream_is_reported_once_and_the_relay_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a running relay publishing to a live broker
    server = NatsServer(_binary(), tmp_path)
    await server.start()
    store = await open_store(f"sqlite:///{tmp_path / 'mid.db'}")
    app = make_ticker_app(store)
    broker = from_url(f"{server.url}?publish_timeout=1")
    await broker.connect()
    relay = Relay(store, broker, idle_wait=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        with caplog.at_level(logging.INFO, logger="tidings.relay"):
            for i in range(10):
                await app.handle(Tick(ticker_id=f"k{i % 2}"))
            await wait_until_drained(store, 10)

            # When the server stops while 30 more commands commit, then comes back
            await server.stop()
            for i in range(30):
                await app.handle(Tick(ticker_id=f"k{i % 2}"))
            await asyncio.sleep(3)
            assert await undelivered(store) == 30
            await server.start()
            await wait_until_drained(store, 30)

        # Then nothing was lost or parked, and the outage was logged once, with its recovery
        assert await undelivered(store) == 0
        assert int((await store.fetch("SELECT count(*) FROM tidings_outbox WHERE parked_at IS NOT NULL"))[0][0]) == 0
        downs = [r for r in caplog.records if ": broker down —" in r.getMessage()]
        assert len(downs) == 1, [r.getMessage() for r in caplog.records]
        assert any("recovered" in r.getMessage() for r in caplog.records)
        ticks = await received_ticks(server, 40)
        for key in ("k0", "k1"):
            assert [v for k, v in ticks if k == key] == list(range(1, 21))
    finally:
        stop.set()
        await task
        await broker.close()
        await server.close()
        await store.close()
