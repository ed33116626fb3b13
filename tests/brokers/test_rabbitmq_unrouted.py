"""RabbitMQ keeps no log: what no group is bound for yet must be kept, not dropped and not blocking."""

from __future__ import annotations

import json
from pathlib import Path

import aio_pika

from server_rabbitmq import start
from tidings.brokers.base import OutgoingMessage
from tidings.messaging import new_id


async def test_a_message_no_group_is_bound_for_is_kept_in_the_unrouted_queue(tmp_path: Path) -> None:
    # Given an exchange with no consumer group bound for topic "nobody.listens"
    server = await start(tmp_path)
    try:
        broker = await server.broker()
        event_id = new_id()
        message = OutgoingMessage(
            topic="nobody.listens", key="k", partition=3, event_id=event_id,
            headers={"tidings-event_id": event_id}, payload=json.dumps({"n": 1}).encode(),
        )

        # When it is published
        [result] = await broker.publish([message])

        # Then the publish is confirmed (nothing for the relay to park) and the message waits in <exchange>.unrouted
        assert result is None
        connection = await aio_pika.connect(server.node.url, timeout=5)
        try:
            channel = await connection.channel()
            queue = await channel.get_queue(f"{server.exchange}.unrouted", ensure=True)
            kept = await queue.get(timeout=5, fail=True)
            assert kept.message_id == event_id and kept.body == message.payload
            await kept.ack()
        finally:
            await connection.close()
    finally:
        await server.close()
