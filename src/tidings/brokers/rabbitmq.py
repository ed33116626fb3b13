"""The RabbitMQ broker (``amqp://``, ``amqps://``) on aio-pika: one topic exchange, one quorum queue per group.

Publishing sends every message of a batch on one channel with publisher confirms and only then
gathers the confirmations (pipelined), persistent and ``mandatory``, to the durable topic exchange
(``tidings`` by default) with routing key ``<topic>.<partition>``. A consumer group is one durable
quorum queue, ``<exchange>.<group>``, bound to ``<topic>.*`` for each of its topics, so one queue
keeps the publish order of everything the group receives; it is consumed with manual acks and a
single active consumer, so a second member of the group waits as a hot standby instead of breaking
the order per key. RabbitMQ requeues whatever a member had not acked when its channel or connection
closes, and counts deliveries in the quorum queue's ``x-delivery-count`` header.

Connections are aio-pika's robust ones: after the server comes back they reconnect by themselves
and restore channels, queues, bindings and consumers. While the publisher's connection is down,
``publish`` fails at once with BrokerUnavailable instead of waiting.

Two RabbitMQ facts shape the rest. It keeps no log: a group sees what is published after its queue
was first declared, and a message no group's queue is bound for would be dropped. By default
(``unroutable="keep"``) the exchange has an alternate exchange that routes such messages to the
durable queue ``<exchange>.unrouted``: nothing is lost, nothing blocks its key, and an operator can
move them on once a group exists. ``"reject"`` publishes ``mandatory`` and returns them as
MessageRejected (the relay parks them, holding their key); ``"drop"`` accepts the loss. And it has no de-duplication: ``message_id`` is
the event id, so consumers' inboxes recognise the duplicates a relay retry can produce.

Options (keyword arguments, or query parameters of the URL): ``exchange``, ``max_message_bytes``
(keep it at or below the server's ``max_message_size``; a larger server refusal is learnt),
``prefetch``, ``confirm_timeout``, ``connect_timeout``, ``reconnect_interval``, ``queue_type``
(``quorum`` or ``classic``), ``single_active_consumer`` and ``unroutable``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Literal

import aio_pika
import aiormq.exceptions
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustExchange,
    AbstractRobustQueue,
)
from yarl import URL

from tidings.brokers.base import (
    BrokerConfigurationError,
    BrokerError,
    BrokerUnavailable,
    Delivery,
    MessageRejected,
    OutgoingMessage,
)
from tidings.messaging.redaction import redact_url

__all__ = ["RabbitMQBroker", "RabbitMQSubscription", "from_url"]

log = logging.getLogger(__name__)

DEFAULT_EXCHANGE = "tidings"
#: RabbitMQ 3.x refuses bodies over ``max_message_size`` (128 MiB by default, 16 MiB from 4.0 on);
#: messages that large hurt every queue they pass through, so stay at the 4.0 default.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
DEFAULT_PREFETCH = 100

#: Our own transport headers; stripped on receipt so Delivery.headers equals what was published.
_TOPIC, _KEY, _PARTITION = "x-tidings-topic", "x-tidings-key", "x-tidings-partition"
#: Headers RabbitMQ adds on its way (delivery counting, dead-lettering); not part of the message.
_BROKER_HEADERS = frozenset(
    {
        "x-delivery-count",
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
    }
)
#: The channel error RabbitMQ sends for a body over its max_message_size (it closes the channel).
_TOO_LARGE = re.compile(r"message size (\d+) is larger than configured max size (\d+)")


def _flag(value: str) -> bool:
    """A boolean query parameter."""
    return value.lower() in {"1", "true", "yes", "on"}


#: Options that may also come as URL query parameters (TIDINGS_BROKER_URL); the rest go to aio-pika.
_URL_OPTIONS = {
    "exchange": str,
    "max_message_bytes": int,
    "prefetch": int,
    "confirm_timeout": float,
    "connect_timeout": float,
    "reconnect_interval": float,
    "queue_type": str,
    "unroutable": str,
    "single_active_consumer": _flag,
}


def from_url(url: str, **options: Any) -> RabbitMQBroker:
    """A RabbitMQBroker for ``url``; tidings options may be given as query parameters or keyword arguments."""
    parsed = URL(url)
    if parsed.scheme not in ("amqp", "amqps") or not url.lower().startswith(f"{parsed.scheme}://") or not parsed.host:
        # aio-pika would otherwise retry such a URL forever in the background, logging it whole.
        raise BrokerConfigurationError(
            f"not an AMQP URL: {redact_url(url)!r}; use amqp://user:password@host:5672/vhost"
        )
    try:
        from_query = {name: _URL_OPTIONS[name](value) for name, value in parsed.query.items() if name in _URL_OPTIONS}
    except ValueError as exc:
        raise BrokerConfigurationError(f"a tidings option in {redact_url(url)!r} has a wrong value: {exc}") from None
    rest = {name: value for name, value in parsed.query.items() if name not in _URL_OPTIONS}
    amqp_url = str(parsed.with_query(rest))
    return RabbitMQBroker(amqp_url, **(from_query | options))


def _describe(exc: BaseException) -> str:
    """An exception as ``Type: message`` (timeouts and cancellations have no message of their own)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _torn_down(exc: BaseException) -> bool:
    """True for a CancelledError that aiormq raised because a connection died, not because we are cancelled.

    aiormq fails the operations of a connection torn down underneath them (heartbeat timeout, reset)
    with the CancelledError of its reader task; passed on, it would look like our caller's own
    cancellation and unwind code that only asked to close or declare something.
    """
    if not isinstance(exc, asyncio.CancelledError):
        return False
    task = asyncio.current_task()
    return task is None or task.cancelling() == 0


async def _close_quietly(closing: Any, timeout: float) -> None:
    """Await an aio-pika close within ``timeout``, whatever state its connection is in."""
    try:
        await asyncio.wait_for(closing, timeout)
    except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError, TimeoutError):
        pass  # already broken: the server drops it and requeues its deliveries
    except asyncio.CancelledError as exc:
        if not _torn_down(exc):
            raise


def _text(value: Any) -> str:
    """A header value as str (AMQP tables may carry bytes for strings written by other clients)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


class RabbitMQBroker:
    """A Broker on a RabbitMQ server (``amqp://user:password@host:5672/vhost``)."""

    def __init__(
        self,
        url: str,
        *,
        exchange: str = DEFAULT_EXCHANGE,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        prefetch: int = DEFAULT_PREFETCH,
        confirm_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        reconnect_interval: float = 1.0,
        queue_type: Literal["quorum", "classic"] | str = "quorum",
        single_active_consumer: bool = True,
        unroutable: Literal["keep", "reject", "drop"] | str = "keep",
    ) -> None:
        if queue_type not in {"quorum", "classic"}:
            raise ValueError(f"queue_type must be 'quorum' or 'classic', not {queue_type!r}")
        if unroutable not in {"keep", "reject", "drop"}:
            raise ValueError(f"unroutable must be 'keep', 'reject' or 'drop', not {unroutable!r}")
        self.url = url
        self.exchange_name = exchange
        self.max_message_bytes = max_message_bytes
        self.prefetch = prefetch
        self.confirm_timeout = confirm_timeout
        self.connect_timeout = connect_timeout
        self.reconnect_interval = reconnect_interval
        self.queue_type = queue_type
        self.single_active_consumer = single_active_consumer
        self.unroutable = unroutable
        #: Names of the group queues this client declared (operators and tests use it to clean up).
        self.declared_queues: set[str] = set()
        self._publisher: AbstractRobustConnection | None = None
        self._consumer: AbstractRobustConnection | None = None
        self._exchange: AbstractRobustExchange | None = None
        self._subscriptions: set[RabbitMQSubscription] = set()
        self._connect_lock = asyncio.Lock()

    async def _open(self, role: str) -> AbstractRobustConnection:
        """A robust connection; publishers and consumers get separate ones, as RabbitMQ recommends.

        (RabbitMQ blocks a publishing connection under a memory or disk alarm; acks on a separate
        consumer connection keep flowing and let the queues drain.)
        """
        try:
            return await asyncio.wait_for(
                aio_pika.connect_robust(
                    self.url,
                    timeout=self.connect_timeout,
                    reconnect_interval=self.reconnect_interval,
                    client_properties={"connection_name": f"tidings {role}"},
                ),
                self.connect_timeout + 1,
            )
        except (aiormq.exceptions.AuthenticationError, aiormq.exceptions.ProbableAuthenticationError,
                aiormq.exceptions.ConnectionNotAllowed) as exc:
            # Not transient: retrying with the same URL will be refused the same way.
            raise BrokerError(
                f"RabbitMQ at {redact_url(self.url)} refused the login ({_describe(exc)}); check the URL's user, "
                "password and vhost"
            ) from exc
        except (OSError, aiormq.exceptions.AMQPError, TimeoutError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and not _torn_down(exc):
                raise
            raise BrokerUnavailable(
                f"cannot connect to RabbitMQ at {redact_url(self.url)} ({_describe(exc)}); "
                "check that the server runs there"
            ) from exc

    async def connect(self) -> None:
        async with self._connect_lock:
            if self._exchange is not None:
                return
            connection = await self._open("publisher")
            try:
                # on_return_raises: an unroutable mandatory message fails its publish with PublishError.
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                arguments = {}
                if self.unroutable == "keep":
                    unrouted = f"{self.exchange_name}.unrouted"
                    fallback = await channel.declare_exchange(
                        unrouted, aio_pika.ExchangeType.FANOUT, durable=True, timeout=self.connect_timeout
                    )
                    queue = await channel.declare_queue(
                        unrouted, durable=True, arguments={"x-queue-type": self.queue_type}, timeout=self.connect_timeout
                    )
                    await queue.bind(fallback, timeout=self.connect_timeout)
                    arguments["alternate-exchange"] = unrouted
                self._exchange = await channel.declare_exchange(
                    self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True, arguments=arguments,
                    timeout=self.connect_timeout,
                )
            except BaseException as exc:
                await _close_quietly(connection.close(), self.connect_timeout)
                if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed):
                    raise BrokerError(
                        f"exchange {self.exchange_name!r} exists on {redact_url(self.url)} but is not a durable topic "
                        f"exchange ({exc}); delete it or choose another with ?exchange=…"
                    ) from exc
                if isinstance(exc, OSError | aiormq.exceptions.AMQPError | TimeoutError) or _torn_down(exc):
                    raise BrokerUnavailable(
                        f"RabbitMQ at {redact_url(self.url)} did not open a channel ({_describe(exc)})"
                    ) from exc
                raise
            self._publisher = connection

    async def publish(self, messages: Sequence[OutgoingMessage]) -> list[BaseException | None]:
        results: list[BaseException | None] = [None] * len(messages)
        if self._exchange is None:
            try:
                await self.connect()
            except BrokerUnavailable as exc:
                return [exc] * len(messages)
        assert self._exchange is not None and self._publisher is not None
        if not self._publisher.connected.is_set():
            # aio-pika reconnects in the background; until then fail at once so the relay backs off.
            down = BrokerUnavailable(
                f"the connection to RabbitMQ at {redact_url(self.url)} is down; reconnecting every {self.reconnect_interval} s"
            )
            return [down] * len(messages)

        sending: dict[int, asyncio.Task[Any]] = {}
        for index, message in enumerate(messages):
            if (problem := self._refusal(message)) is not None:
                results[index] = problem
                continue
            # Tasks start in this order and aiormq writes frames under a FIFO lock, so the broker
            # receives the batch in order on one channel: a queue keeps that order per key.
            sending[index] = asyncio.ensure_future(
                self._exchange.publish(
                    self._amqp_message(message),
                    routing_key=f"{message.topic}.{message.partition}",
                    mandatory=self.unroutable == "reject",
                )
            )
        if not sending:
            return results
        try:
            _, late = await asyncio.wait(sending.values(), timeout=self.confirm_timeout)
        finally:
            # Unconfirmed after the timeout (or the caller was cancelled): stop waiting for them.
            unfinished = [task for task in sending.values() if not task.done()]
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        for index, task in sending.items():
            if task in late:
                results[index] = BrokerUnavailable(
                    f"RabbitMQ did not confirm {messages[index].topic} message {messages[index].event_id} "
                    f"within {self.confirm_timeout} s"
                )
            else:
                results[index] = self._outcome(messages[index], task)
        return results

    def _refusal(self, message: OutgoingMessage) -> MessageRejected | None:
        """Why this message can never be published as it is, or None."""
        if len(message.payload) > self.max_message_bytes:
            return MessageRejected(
                f"{message.topic} message {message.event_id} is {len(message.payload)} bytes, over the RabbitMQ "
                f"broker's limit of {self.max_message_bytes} (max_message_bytes); store large data elsewhere and "
                "publish a reference"
            )
        if "*" in message.topic or "#" in message.topic or not message.topic:
            return MessageRejected(
                f"topic {message.topic!r} of message {message.event_id} is empty or holds '*' or '#', which are "
                "wildcards in RabbitMQ routing keys"
            )
        if len(f"{message.topic}.{message.partition}".encode()) > 255:
            return MessageRejected(f"topic {message.topic[:40]!r}… is too long for a RabbitMQ routing key (255 bytes)")
        # AMQP short strings: header names and message_id hold at most 255 bytes.
        if len(message.event_id.encode()) > 255 or any(len(name.encode()) > 255 for name in message.headers):
            return MessageRejected(
                f"message {message.event_id[:40]!r}… has an event id or header name over AMQP's 255-byte limit"
            )
        return None

    @staticmethod
    def _amqp_message(message: OutgoingMessage) -> aio_pika.Message:
        headers: dict[str, Any] = dict(message.headers)
        headers[_TOPIC] = message.topic
        headers[_KEY] = message.key
        headers[_PARTITION] = str(message.partition)
        return aio_pika.Message(
            message.payload,
            headers=headers,
            message_id=message.event_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )

    def _outcome(self, message: OutgoingMessage, task: asyncio.Task[Any]) -> BaseException | None:
        """None if RabbitMQ confirmed the message, else the error the relay should act on."""
        if task.cancelled():
            return BrokerUnavailable(f"publishing {message.event_id} was cancelled (connection closing)")
        exc = task.exception()
        if exc is None:
            return None
        what = f"{message.topic} message {message.event_id}"
        if isinstance(exc, aiormq.exceptions.PublishError):
            # basic.return: no queue is bound to the routing key. RabbitMQ would drop the message, so
            # it is parked instead; once a group subscribes to the topic it can be replayed.
            return MessageRejected(
                f"{what} is unroutable: no consumer group is subscribed to topic {message.topic!r} on exchange "
                f"{self.exchange_name!r}, so RabbitMQ would drop it; subscribe a group, then replay it "
                "(or open the broker with unroutable='drop')"
            )
        if isinstance(exc, aiormq.exceptions.DeliveryError):
            # basic.nack: the queue could not take responsibility right now (full with reject-publish,
            # no quorum, internal error). Retrying can succeed; the relay parks it after too many attempts.
            return BrokerUnavailable(f"RabbitMQ refused {what} for now (basic.nack); retry later")
        if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed) and (match := _TOO_LARGE.search(str(exc))):
            # The server's max_message_size is below ours: it closed the channel (aio-pika reopens it).
            # Learn its limit so the next oversized message is refused before it is sent.
            server_limit = int(match.group(2))
            self.max_message_bytes = min(self.max_message_bytes, server_limit)
            if len(message.payload) > server_limit:
                return MessageRejected(
                    f"{what} is {len(message.payload)} bytes, over the RabbitMQ server's max_message_size of {server_limit}"
                )
            return BrokerUnavailable(f"{what} was lost with its channel when RabbitMQ refused a larger message; retry")
        return BrokerUnavailable(f"publishing {what} to RabbitMQ failed ({_describe(exc)}); retry later")

    async def subscribe(self, topics: Sequence[str], group: str) -> RabbitMQSubscription:
        for topic in topics:
            if not topic or "*" in topic or "#" in topic:
                raise ValueError(f"topic {topic!r} is empty or holds '*' or '#', which are wildcards in RabbitMQ")
        if self._exchange is None:
            await self.connect()
        async with self._connect_lock:
            if self._consumer is None:
                self._consumer = await self._open("consumer")
        subscription = RabbitMQSubscription(self, list(topics), group)
        try:
            await asyncio.wait_for(subscription.start(self._consumer), self.connect_timeout * 2)
        except BaseException as exc:
            await subscription.close()
            if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed):
                raise BrokerError(
                    f"queue {subscription.queue_name!r} of group {group!r} exists with other arguments than this "
                    f"client declares ({exc}); it was made by another tidings configuration — drain and delete it"
                ) from exc
            if isinstance(exc, OSError | aiormq.exceptions.AMQPError | TimeoutError) or _torn_down(exc):
                raise BrokerUnavailable(f"cannot subscribe group {group!r} on RabbitMQ ({_describe(exc)})") from exc
            raise
        self._subscriptions.add(subscription)
        self.declared_queues.add(subscription.queue_name)
        return subscription

    async def close(self) -> None:
        for subscription in list(self._subscriptions):
            await subscription.close()
        # Closing a connection fails the confirmations still awaited by a concurrent publish(),
        # which then reports them as BrokerUnavailable; nothing is dropped silently.
        for connection in (self._consumer, self._publisher):
            if connection is not None:
                await _close_quietly(connection.close(), self.connect_timeout)
        self._consumer = self._publisher = None
        self._exchange = None


class RabbitMQSubscription:
    """One consumer group's member on RabbitMQ: a consumer on the group's queue, on a channel of its own."""

    def __init__(self, broker: RabbitMQBroker, topics: list[str], group: str) -> None:
        self.broker = broker
        self.topics = topics
        self.group = group
        self.queue_name = f"{broker.exchange_name}.{group}"
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractRobustQueue | None = None
        self._buffer: asyncio.Queue[AbstractIncomingMessage | None] = asyncio.Queue()
        self._timers: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self, connection: AbstractRobustConnection) -> None:
        broker = self.broker
        self._channel = channel = await connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=broker.prefetch)
        arguments: dict[str, Any] = {"x-queue-type": broker.queue_type}
        if broker.single_active_consumer:
            arguments["x-single-active-consumer"] = True
        # Durable and never auto-deleted: the group keeps receiving while no member is connected.
        self._queue = queue = await channel.declare_queue(self.queue_name, durable=True, arguments=arguments)
        for topic in self.topics:
            await queue.bind(broker.exchange_name, routing_key=f"{topic}.*")
        await queue.consume(self._on_message, no_ack=False)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # aio-pika runs one task per delivery, started in arrival order; this never suspends, so the
        # buffer keeps that order.
        self._buffer.put_nowait(message)

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self._deliveries()

    async def _deliveries(self) -> AsyncIterator[Delivery]:
        while not self._closed:
            message = await self._buffer.get()
            if message is None:
                self._buffer.put_nowait(None)  # wake any other iterator too
                return
            try:
                message.channel  # noqa: B018 - raises if the channel it came on is gone
            except aio_pika.exceptions.ChannelInvalidStateError:
                # Its channel closed (connection lost): RabbitMQ has requeued it and delivers it again
                # on the restored channel, so handing this copy out would only duplicate it.
                continue
            yield self._delivery(message)

    def _delivery(self, message: AbstractIncomingMessage) -> Delivery:
        raw: Mapping[str, Any] = message.headers or {}
        headers = {name: _text(value) for name, value in raw.items() if name not in _BROKER_HEADERS}
        topic = headers.pop(_TOPIC, None) or (message.routing_key or "").rsplit(".", 1)[0]
        key = headers.pop(_KEY, "")
        try:
            partition = int(headers.pop(_PARTITION, "0"))
        except ValueError:
            partition = 0  # not published by tidings; the key and partition are unknown
        event_id = message.message_id or headers.get("tidings-event_id", "")
        if self.broker.queue_type == "quorum":
            # Quorum queues count earlier deliveries of this message to this queue (absent the first time).
            count = raw.get("x-delivery-count")
            attempt = int(count) + 1 if count is not None else 1
        else:
            attempt = 2 if message.redelivered else 1
        return Delivery(
            topic=topic,
            key=key,
            partition=partition,
            event_id=event_id,
            headers=headers,
            payload=message.body,
            attempt=attempt,
            _settle=_Settle(self, message),
        )

    async def _ack(self, message: AbstractIncomingMessage) -> None:
        if message.processed:
            return  # settled already (acked twice, or acked while a delayed nack was pending)
        try:
            await message.ack()
        except (aio_pika.exceptions.ChannelInvalidStateError, aiormq.exceptions.AMQPError, ConnectionError,
                asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and not _torn_down(exc):
                raise
            # The channel it came on is gone, so RabbitMQ has already requeued it and will deliver it
            # again; the consumer's inbox recognises the event id. Nothing else can be done here.
            log.warning(
                "could not ack %s on group %s (%s); RabbitMQ will deliver it again", message.message_id, self.group, _describe(exc)
            )

    async def _nack(self, message: AbstractIncomingMessage, delay: float) -> None:
        """Requeue after ``delay`` seconds by holding the delivery, then nacking it with requeue.

        RabbitMQ has no delayed redelivery. Holding keeps the message where it is — a quorum queue
        puts a requeued message back at its head, ahead of later messages of its key — and keeps the
        broker's delivery count, at the price of one prefetch slot per held message. The timer lives
        in this process: if the member dies meanwhile, RabbitMQ redelivers at once (early, never lost).
        A hold must stay below the server's consumer_timeout (30 min by default), after which
        RabbitMQ closes the channel and requeues the message anyway.
        """

        async def requeue() -> None:
            if delay > 0:
                await asyncio.sleep(delay)
            if message.processed:
                return  # acked meanwhile
            try:
                await message.nack(requeue=True)
            except (aio_pika.exceptions.ChannelInvalidStateError, aiormq.exceptions.AMQPError, ConnectionError,
                    asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and not _torn_down(exc):
                    raise
                # its channel is gone: RabbitMQ has requeued it already

        if delay <= 0:
            await requeue()
            return
        timer = asyncio.get_running_loop().create_task(requeue())
        self._timers.add(timer)  # held so the task is not collected before it fires
        timer.add_done_callback(self._timers.discard)

    async def close(self) -> None:
        """Leave the group: RabbitMQ requeues every delivery this member had not acked (held ones too)."""
        if self._closed:
            return
        self._closed = True
        for timer in list(self._timers):
            timer.cancel()
        if self._channel is not None and not self._channel.is_closed:
            # Whatever fails here, the channel is gone, which requeues the same deliveries.
            await _close_quietly(self._channel.close(), self.broker.connect_timeout)
        while not self._buffer.empty():
            self._buffer.get_nowait()
        self._buffer.put_nowait(None)
        self.broker._subscriptions.discard(self)


class _Settle:
    def __init__(self, subscription: RabbitMQSubscription, message: AbstractIncomingMessage) -> None:
        self.subscription = subscription
        self.message = message

    async def ack(self, delivery: Delivery) -> None:
        await self.subscription._ack(self.message)

    async def nack(self, delivery: Delivery, delay: float) -> None:
        await self.subscription._nack(self.message, delay)
