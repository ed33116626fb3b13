"""Redis Streams: a member taking over a consumer group gets a key's older messages before its newer ones.

Each test has a private redis-server (``server_redis.py``) and a short ``claim_idle``, so a dead
member's entries can be reclaimed within a second. The members that die are processes of their
own, killed with SIGKILL; the ones that leave call ``close()`` as the consumer does when it hands
a shard back. See docs/decisions/0020-redis-takeover-order.md.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import server_redis
from consumer_model import TOPIC, message, publish
from server_redis import RedisServer
from tidings.brokers.redis import RedisBroker, RedisSubscription

#: Seconds an entry must go unrenewed before another member takes it (5 s by default).
CLAIM_IDLE = 1.0
GROUP = "takeover"


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A private redis-server for one test."""
    server = await server_redis.start(tmp_path)
    try:
        yield server
    finally:
        await server.close()


async def member(server: RedisServer, claim_idle: float = CLAIM_IDLE) -> RedisBroker:
    """A connected client, as a consumer process would have one."""
    broker = RedisBroker(server.url, claim_idle=claim_idle)
    await broker.connect()
    return broker


async def numbers_in_order_of_arrival(subscription: RedisSubscription, count: int, timeout: float = 30) -> list[int]:
    """The ``n`` of each first delivery, acked, until ``count`` distinct ones came (fails after ``timeout``)."""
    seen: list[int] = []

    async def read() -> None:
        async for delivery in subscription:
            n = json.loads(delivery.payload)["n"]
            if n not in seen:
                seen.append(n)
            await delivery.ack()
            if len(seen) == count:
                return

    try:
        await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        pytest.fail(f"got only {seen} within {timeout} s")
    return seen


async def take(subscription: RedisSubscription, count: int) -> list[int]:
    """Receive ``count`` deliveries and settle none of them (a consumer that has not started on them yet)."""
    taken: list[int] = []
    async for delivery in subscription:
        taken.append(json.loads(delivery.payload)["n"])
        if len(taken) == count:
            return taken
    return taken


async def test_a_member_taking_over_a_group_handed_back_mid_batch_gets_the_keys_messages_at_once_in_order(
    redis_server: RedisServer,
) -> None:
    # Given members whose entries stay their own for a minute unless handed back (claim_idle=60),
    # and one that read a key's messages 1-10 at once, handed out 1-5 and settled none of them
    publisher = await member(redis_server)
    await publish(publisher, [message("k", n) for n in range(1, 11)])
    leaving = await member(redis_server, claim_idle=60)
    first = await leaving.subscribe([TOPIC], GROUP)
    assert await take(first, 5) == [1, 2, 3, 4, 5]

    # When it leaves the group (as the consumer does handing a shard back: what it had not started
    # on is dropped) and another member reads the group at once
    await first.close()
    successor = await member(redis_server, claim_idle=60)
    second = await successor.subscribe([TOPIC], GROUP)
    try:
        seen = await numbers_in_order_of_arrival(second, 10, timeout=20)
    finally:
        await second.close()
        for broker in (leaving, successor, publisher):
            await broker.close()

    # Then the next member got all ten well before claim_idle, in the key's order: 1-5, which were
    # handed out, before 6-10, which were only read ahead
    assert seen == list(range(1, 11))


# A member of GROUP that receives ``count`` messages, settles none, optionally hands back all but
# the first ``keep`` of what it read (as a close() interrupted half-way would), then waits to be killed.
_HOLDING_MEMBER = """
import asyncio, sys
from tidings.brokers.redis import RedisBroker

async def main():
    url, topic, group, count, keep = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    broker = RedisBroker(url, claim_idle=float(sys.argv[6]))
    await broker.connect()
    subscription = await broker.subscribe([topic], group)
    held = 0
    async for delivery in subscription:
        held += 1  # received, never settled
        if held == count:
            break
    if keep:
        client = broker._client
        for stream in subscription._streams:
            rows = await client.xpending_range(stream, group, "-", "+", 1000, consumername=subscription.consumer)
            ids = [row["message_id"] for row in rows][keep:]
            if ids:
                await client.xclaim(stream, group, subscription.consumer, 0, ids, idle=10**9, justid=True)
    print("holding", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def holding_member_killed(server: RedisServer, count: int, keep: int = 0) -> None:
    """Run a member that receives ``count`` messages and settles none, then SIGKILL it."""
    doomed = subprocess.Popen(
        [sys.executable, "-c", _HOLDING_MEMBER, server.url, TOPIC, GROUP, str(count), str(keep), str(CLAIM_IDLE)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        line = await asyncio.wait_for(asyncio.to_thread(doomed.stdout.readline), 30)  # type: ignore[union-attr]
        assert line.strip() == "holding"
    finally:
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)


async def test_a_member_taking_over_from_one_killed_mid_batch_on_redis_gets_the_keys_older_messages_first(
    redis_server: RedisServer,
) -> None:
    # Given a member of a group that received a key's messages 1-5 and was killed (SIGKILL) before settling them
    publisher = await member(redis_server)
    await publish(publisher, [message("k", n) for n in range(1, 6)])
    await holding_member_killed(redis_server, 5)

    # When messages 6-10 of the key follow and a new member reads the group at once (before claim_idle runs out)
    await publish(publisher, [message("k", n) for n in range(6, 11)])
    successor = await member(redis_server)
    subscription = await successor.subscribe([TOPIC], GROUP)
    try:
        seen = await numbers_in_order_of_arrival(subscription, 10)
    finally:
        await subscription.close()
        await successor.close()
        await publisher.close()

    # Then it gets them in the key's order: the dead member's unsettled 1-5 (reclaimed) before 6-10
    assert seen == list(range(1, 11))


async def test_a_member_killed_while_handing_back_leaves_a_successor_that_holds_the_newer_messages_until_the_older_come(
    redis_server: RedisServer,
) -> None:
    # Given a member that received a key's messages 1-10, released 6-10 for the next member at once
    # and was killed (SIGKILL) before releasing 1-5, which stay its own until claim_idle runs out
    publisher = await member(redis_server)
    await publish(publisher, [message("k", n) for n in range(1, 11)])
    await holding_member_killed(redis_server, 10, keep=5)

    # When a new member reads the group at once (6-10 are claimable now, 1-5 only after claim_idle)
    successor = await member(redis_server)
    subscription = await successor.subscribe([TOPIC], GROUP)
    try:
        seen = await numbers_in_order_of_arrival(subscription, 10)
    finally:
        await subscription.close()
        await successor.close()
        await publisher.close()

    # Then it holds 6-10 back until it has 1-5, and hands them all on in the key's order
    assert seen == list(range(1, 11))


async def test_hundreds_of_deliveries_acked_at_once_are_all_settled(redis_server: RedisServer) -> None:
    # Given a member holding 600 unsettled deliveries of several keys (the consumer acks a batch, and
    # the other shards' messages it skips, all at once)
    publisher = await member(redis_server)
    await publish(publisher, [message(f"k{n % 30}", n) for n in range(1, 601)])
    reader = await member(redis_server, claim_idle=60)
    subscription = await reader.subscribe([TOPIC], GROUP)
    deliveries = []
    try:
        async for delivery in subscription:
            deliveries.append(delivery)
            if len(deliveries) == 600:
                break

        # When it acks them all at once
        results = await asyncio.gather(*(d.ack() for d in deliveries), return_exceptions=True)

        # Then every ack succeeded and nothing is left pending in the group
        failed = [r for r in results if r is not None]
        assert not failed, f"{len(failed)} of 600 acks failed, e.g. {failed[0]!r}"
        client = reader._client
        pending = [(await client.xpending(stream, GROUP))["pending"] for stream in subscription._streams]
        assert sum(pending) == 0
    finally:
        await subscription.close()
        await reader.close()
        await publisher.close()
