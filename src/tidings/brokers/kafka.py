"""The Kafka broker (``kafka://host:port[,host:port…]``): an idempotent producer and consumer groups, via aiokafka.

Publishing uses one idempotent producer (``enable_idempotence=True``, ``acks="all"``): the broker
de-duplicates the producer's own retries and keeps them in order per partition. A message goes
to partition ``message.partition % partitions`` of its topic, so one partition key always lands in
one Kafka partition (order per key) as long as the topic's partition count does not change (pick
a divisor of the relay's partition count, 32 by default, for an even spread). Topics are created on
first use with ``partitions`` partitions (default 8) unless ``create_topics=false``. Kafka topic
names allow fewer characters than tidings topics: see ``kafka_topic``. The original topic, key,
partition and event id travel in ``tidings-*`` headers; Delivery.headers are the publisher's own.

Subscribing joins a Kafka consumer group with auto-commit off. ``ack`` commits, per partition, the
offset after the highest message below which every delivered message was acked (like the local
broker), so whatever was not acked when a member died goes to the next member of the group.
``nack(delay)`` re-yields the message from this subscription after the delay and does not commit
past it; if the member dies or loses the partition first, the next owner gets it from the committed
offset. Kafka does not count deliveries: ``attempt`` counts them in this subscription only.

URL query options (all optional, also accepted as keyword arguments of ``from_url``): ``partitions``,
``replication_factor``, ``create_topics``, ``publish_timeout``, ``connect_timeout``,
``max_request_size``, ``request_timeout_ms``, ``session_timeout_ms``, ``heartbeat_interval_ms``,
``client_id``. Credentials in the URL (``kafka://user:password@host:port``) log in with SASL
(``sasl_mechanism``: PLAIN by default, SCRAM-SHA-256 or SCRAM-SHA-512; ``security_protocol``:
SASL_PLAINTEXT by default, or SASL_SSL); they are handed to aiokafka as credentials, never as part of
a host name, so neither our messages nor aiokafka's logs can contain them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    ConsumerStoppedError,
    IllegalStateError,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
    UnknownProducerId,
    for_code,
)

from tidings.brokers.base import (
    BrokerConfigurationError,
    BrokerError,
    BrokerUnavailable,
    Delivery,
    MessageRejected,
    OutgoingMessage,
)
from tidings.messaging.redaction import redact_url

__all__ = ["KafkaBroker", "KafkaSubscription", "from_url", "kafka_topic"]

log = logging.getLogger(__name__)

DEFAULT_PARTITIONS = 8
#: aiokafka's default ``max_request_size``, just under Kafka's default ``message.max.bytes`` (1 MiB + 12).
DEFAULT_MAX_REQUEST_SIZE = 1024 * 1024

# Headers of our own that carry what Kafka's record cannot hold as we gave it: the topic before
# sanitising and the tidings partition before the modulo. The event id and the key travel as well,
# so a delivery is complete even from a record whose key was stripped by a tool on the way.
TOPIC_HEADER = "tidings-topic"
KEY_HEADER = "tidings-key"
PARTITION_HEADER = "tidings-partition"
EVENT_ID_HEADER = "tidings-event_id"  # the envelope's own field; the same value by construction
_TRANSPORT_HEADERS = frozenset({TOPIC_HEADER, KEY_HEADER, PARTITION_HEADER})

# Errors that no retry of this message can fix: it is too big, or its topic name is not allowed.
_REJECTED = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError, InvalidTopicError)
# Errors after which the producer's idempotence state (producer id, sequence numbers) is unusable:
# aiokafka's sender stops for good, so the next publish starts a fresh producer.
_PRODUCER_BROKEN = (OutOfOrderSequenceNumber, ProducerFenced, UnknownProducerId, ProducerClosed)

_LEGAL_TOPIC = re.compile(r"[^a-zA-Z0-9._-]")
_MAX_TOPIC_LENGTH = 249


def kafka_topic(topic: str) -> str:
    """The Kafka topic for a tidings topic: illegal characters become ``_``, with a hash suffix when changed.

    Kafka allows ``[a-zA-Z0-9._-]`` and 249 characters. A name that had to change gets 8 hex digits of
    its SHA-1, so ``orders/eu`` and ``orders_eu`` stay two different topics.
    """
    cleaned = _LEGAL_TOPIC.sub("_", topic)
    if cleaned == topic and len(topic) <= _MAX_TOPIC_LENGTH and topic not in {"", ".", ".."}:
        return topic
    digest = hashlib.sha1(topic.encode()).hexdigest()[:8]
    return f"{cleaned[: _MAX_TOPIC_LENGTH - 9]}-{digest}"


_INT_OPTIONS = frozenset(
    {
        "partitions",
        "replication_factor",
        "max_request_size",
        "request_timeout_ms",
        "session_timeout_ms",
        "heartbeat_interval_ms",
    }
)


_SASL_MECHANISMS = frozenset({"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"})
_SECURITY_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})


def _options_from_query(query: str, url: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The broker's keyword options and the SASL settings (``sasl_mechanism``, ``security_protocol``) of a URL query."""
    options: dict[str, Any] = {}
    sasl: dict[str, str] = {}
    for name, value in parse_qsl(query):
        try:
            if name in _INT_OPTIONS:
                options[name] = int(value)
            elif name in {"publish_timeout", "connect_timeout"}:
                options[name] = float(value)
            elif name == "create_topics":
                options[name] = value.lower() in {"1", "true", "yes", "on"}
            elif name == "client_id":
                options[name] = value
            elif name in {"sasl_mechanism", "security_protocol"}:
                allowed = _SASL_MECHANISMS if name == "sasl_mechanism" else _SECURITY_PROTOCOLS
                if value.upper() not in allowed:
                    raise BrokerConfigurationError(
                        f"kafka:// URL option {name}={value!r} is not one of {', '.join(sorted(allowed))}"
                    )
                sasl[name] = value.upper()
            else:
                raise BrokerConfigurationError(
                    f"unknown kafka:// URL option {name!r} in {redact_url(url)!r}; see tidings.brokers.kafka for the list"
                )
        except ValueError as exc:
            if isinstance(exc, BrokerConfigurationError):
                raise
            raise BrokerConfigurationError(f"kafka:// URL option {name}={value!r} is not a number") from None
    return options, sasl


def from_url(url: str, **options: Any) -> KafkaBroker:
    """A KafkaBroker for ``kafka://[user:password@]host:port[,host:port…][?option=value…]`` (not connected yet)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "kafka" or not parts.netloc:
        raise BrokerConfigurationError(
            f"not a Kafka URL: {redact_url(url)!r}; expected kafka://[user:password@]host:port[,host:port…]"
        )
    userinfo, _, hosts = parts.netloc.rpartition("@")
    servers = [s if ":" in s else f"{s}:9092" for s in hosts.split(",") if s]
    query_options, sasl = _options_from_query(parts.query, url)
    security: dict[str, Any] = {}
    if userinfo:
        user, colon, password = userinfo.partition(":")
        if not colon:
            raise BrokerConfigurationError(
                f"the Kafka URL {redact_url(url)!r} names user {unquote(user)!r} without a password; "
                "use kafka://user:password@host:port"
            )
        security = {
            "security_protocol": sasl.get("security_protocol", "SASL_PLAINTEXT"),
            "sasl_mechanism": sasl.get("sasl_mechanism", "PLAIN"),
            "sasl_plain_username": unquote(user),
            "sasl_plain_password": unquote(password),
        }
    elif sasl:
        raise BrokerConfigurationError(
            f"the Kafka URL {redact_url(url)!r} sets {', '.join(sorted(sasl))} but has no user:password@ to log in with"
        )
    return KafkaBroker(url, servers, **(query_options | {"security": security} | options))


def _classify(exc: BaseException, message: OutgoingMessage) -> BrokerError:
    """The tidings error for what aiokafka raised about ``message``: permanent or transient."""
    if isinstance(exc, BrokerError):
        return exc
    where = f"Kafka topic {kafka_topic(message.topic)!r}, message {message.event_id}"
    if isinstance(exc, _REJECTED):
        return MessageRejected(f"{where} was refused: {_explain(exc)}")
    # Everything else — timeouts, lost connections, leaders moving, authorisation, errors we do not
    # know — is retried: a retry keeps order per key and loses nothing, parking might do neither.
    return BrokerUnavailable(f"{where} was not confirmed: {_explain(exc)}")


def _explain(exc: BaseException) -> str:
    """``Type: message`` for an error, also for the many aiokafka and asyncio errors whose message is empty."""
    text = str(exc)
    if isinstance(exc, TimeoutError) and not text:
        return "timed out"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _retrieve(future: asyncio.Future[Any]) -> None:
    # Futures we gave up waiting for may still fail later; reading the error keeps asyncio quiet.
    if not future.cancelled():
        future.exception()


class KafkaBroker:
    """A Broker over a Kafka cluster (``kafka://``)."""

    def __init__(
        self,
        url: str,
        bootstrap_servers: Sequence[str],
        *,
        partitions: int = DEFAULT_PARTITIONS,
        replication_factor: int | None = None,
        create_topics: bool = True,
        publish_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        max_request_size: int = DEFAULT_MAX_REQUEST_SIZE,
        request_timeout_ms: int = 10_000,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 1_000,
        client_id: str = "tidings",
        security: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.bootstrap_servers = list(bootstrap_servers)
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.create_topics = create_topics
        self.publish_timeout = publish_timeout
        self.connect_timeout = connect_timeout
        self.request_timeout_ms = request_timeout_ms
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.client_id = client_id
        # SASL settings for every aiokafka client (producer, admin, consumers); empty for plaintext.
        self._security = dict(security or {})
        if self._security.get("security_protocol") == "SASL_SSL" and "ssl_context" not in self._security:
            from aiokafka.helpers import create_ssl_context

            self._security["ssl_context"] = create_ssl_context()
        self._max_request_size = max_request_size
        #: A payload over this never fits a produce request; headers and key count against it too.
        self.max_message_bytes = max_request_size
        self._producer: AIOKafkaProducer | None = None
        self._producer_broken = False
        self._producer_lock = asyncio.Lock()
        self._admin: AIOKafkaAdminClient | None = None
        self._ensured: set[str] = set()
        self._subscriptions: set[KafkaSubscription] = set()
        self._orphans: set[asyncio.Task[None]] = set()

    # -- connecting ---------------------------------------------------------------------------

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        await self._ready_producer(loop.time() + self.connect_timeout)

    async def _ready_producer(self, deadline: float) -> AIOKafkaProducer:
        """The producer, started (again) if there is none or the last one broke; BrokerUnavailable if it cannot be."""
        async with self._producer_lock:
            if self._producer is not None and not self._producer_broken:
                return self._producer
            if self._producer is not None:
                # The old producer's idempotence state is unusable; stop it in the background
                # (its unconfirmed sends were already reported as BrokerUnavailable).
                self._stop_in_background(self._producer)
                self._producer = None
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap_servers,
                client_id=self.client_id,
                enable_idempotence=True,
                acks="all",
                max_request_size=self._max_request_size,
                request_timeout_ms=self.request_timeout_ms,
                linger_ms=0,
                **self._security,
            )
            try:
                await asyncio.wait_for(producer.start(), self._remaining(deadline))
            except (KafkaError, OSError, TimeoutError) as exc:
                await _quietly(producer.stop(), 1.0)
                raise BrokerUnavailable(
                    f"cannot reach Kafka at {','.join(self.bootstrap_servers)}: {_explain(exc)}"
                ) from exc
            self._producer, self._producer_broken = producer, False
            return producer

    async def _admin_client(self, deadline: float) -> AIOKafkaAdminClient:
        if self._admin is None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.bootstrap_servers,
                client_id=f"{self.client_id}-admin",
                request_timeout_ms=self.request_timeout_ms,
                **self._security,
            )
            try:
                await asyncio.wait_for(admin.start(), self._remaining(deadline))
            except (KafkaError, OSError, TimeoutError) as exc:
                await _quietly(admin.close(), 1.0)
                raise BrokerUnavailable(f"cannot reach Kafka to create topics: {_explain(exc)}") from exc
            self._admin = admin
        return self._admin

    async def _ensure_topics(self, names: Iterable[str], deadline: float) -> None:
        """Create the Kafka topics not known to exist yet, with ``partitions`` partitions each."""
        missing = sorted(set(names) - self._ensured)
        if not missing:
            return
        if not self.create_topics:
            self._ensured.update(missing)  # someone else manages topics; metadata will tell
            return
        admin = await self._admin_client(deadline)
        try:
            if self.replication_factor is None:
                brokers = (await asyncio.wait_for(admin.describe_cluster(), self._remaining(deadline)))["brokers"]
                self.replication_factor = max(1, min(3, len(brokers)))
            response = await asyncio.wait_for(
                admin.create_topics([NewTopic(name, self.partitions, self.replication_factor) for name in missing]),
                self._remaining(deadline),
            )
        except (KafkaError, OSError, TimeoutError) as exc:
            raise BrokerUnavailable(f"cannot create Kafka topics {missing}: {_explain(exc)}") from exc
        for name, code, *rest in response.topic_errors:
            error = for_code(code)
            if code == 0 or error is TopicAlreadyExistsError:
                self._ensured.add(name)
            elif error is InvalidTopicError:
                raise MessageRejected(f"Kafka refused the topic name {name!r}: {rest[0] if rest else error.__name__}")
            else:
                # Not allowed to create topics (ACLs) and the like: the topic may exist anyway;
                # publish and subscribe find out from metadata, so do not fail here.
                log.warning("could not create Kafka topic %r (%s); assuming it exists", name, error.__name__)
                self._ensured.add(name)

    # -- publishing ---------------------------------------------------------------------------

    async def publish(self, messages: Sequence[OutgoingMessage]) -> list[BaseException | None]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout
        results: list[BaseException | None] = [None] * len(messages)
        todo: list[int] = []
        for i, message in enumerate(messages):
            if len(message.payload) > self.max_message_bytes:
                results[i] = MessageRejected(
                    f"{message.topic} message {message.event_id} is {len(message.payload)} bytes, over the Kafka "
                    f"producer's max_request_size of {self.max_message_bytes}"
                )
            else:
                todo.append(i)
        if not todo:
            return results

        try:
            producer = await self._ready_producer(deadline)
        except BrokerUnavailable as exc:
            for i in todo:
                results[i] = exc
            return results

        # Partition counts per Kafka topic (created first if need be); a topic that fails fails its messages.
        counts: dict[str, int | BrokerError] = {}
        for name in {kafka_topic(messages[i].topic) for i in todo}:
            try:
                await self._ensure_topics([name], deadline)
                counts[name] = len(await asyncio.wait_for(producer.partitions_for(name), self._remaining(deadline)))
            except BrokerError as exc:
                counts[name] = exc
            except (KafkaError, OSError, TimeoutError) as exc:
                counts[name] = BrokerUnavailable(f"no metadata for Kafka topic {name!r}: {_explain(exc)}")

        # Pipelined: send() only queues the record and returns a future; the confirmations are
        # gathered afterwards. The producer sends one batch per partition at a time and retries it
        # with the same sequence number, so the broker keeps order and drops duplicates.
        futures: dict[int, asyncio.Future[Any]] = {}
        try:
            # One deadline for the whole loop, not a wait_for per record: wait_for yields to the loop
            # on every record, so the sender shipped one tiny request per record (330 rows/s);
            # queued without yielding, a round goes out as one request per partition. A timeout
            # cancels send() itself, which withdraws that record (unlike cancelling its future).
            async with asyncio.timeout_at(deadline):
                for i in todo:
                    message = messages[i]
                    name = kafka_topic(message.topic)
                    count = counts[name]
                    if isinstance(count, BrokerError):
                        results[i] = count
                        continue
                    headers = [(k, v.encode()) for k, v in message.headers.items() if k not in _TRANSPORT_HEADERS]
                    if EVENT_ID_HEADER not in message.headers:
                        headers.append((EVENT_ID_HEADER, message.event_id.encode()))
                    headers += [
                        (TOPIC_HEADER, message.topic.encode()),
                        (KEY_HEADER, message.key.encode()),
                        (PARTITION_HEADER, str(message.partition).encode()),
                    ]
                    try:
                        futures[i] = await producer.send(
                            name, message.payload, key=message.key.encode(), partition=message.partition % count, headers=headers
                        )
                    except (KafkaError, OSError) as exc:
                        results[i] = self._failed(exc, message)
        except TimeoutError:
            for i in todo:
                if i not in futures and results[i] is None:
                    results[i] = BrokerUnavailable(
                        f"Kafka's producer did not take {messages[i].topic} message {messages[i].event_id} within "
                        f"{self.publish_timeout:g} s (its buffer stayed full)"
                    )

        if futures:
            await asyncio.wait(futures.values(), timeout=self._remaining(deadline))
        for i, future in futures.items():
            if not future.done():
                # Still unconfirmed: the producer keeps retrying it in order, so it may yet arrive;
                # the caller retries too and consumers de-duplicate by event id.
                future.add_done_callback(_retrieve)
                results[i] = BrokerUnavailable(
                    f"Kafka did not confirm {messages[i].topic} message {messages[i].event_id} within "
                    f"{self.publish_timeout:g} s"
                )
            elif (error := future.exception()) is not None:
                results[i] = self._failed(error, messages[i])
        return results

    def _failed(self, exc: BaseException, message: OutgoingMessage) -> BrokerError:
        # A bare KafkaError is what aiokafka's sender leaves behind when it died of something unexpected.
        if isinstance(exc, _PRODUCER_BROKEN) or type(exc) is KafkaError:
            self._producer_broken = True
        return _classify(exc, message)

    @staticmethod
    def _remaining(deadline: float) -> float:
        return max(0.0, deadline - asyncio.get_running_loop().time())

    # -- subscribing --------------------------------------------------------------------------

    async def subscribe(self, topics: Sequence[str], group: str) -> KafkaSubscription:
        deadline = asyncio.get_running_loop().time() + self.connect_timeout
        names = {kafka_topic(topic): topic for topic in topics}
        # Created up front so the group is assigned its partitions at once, not after a metadata refresh.
        await self._ensure_topics(names, deadline)
        subscription = KafkaSubscription(self, names, group)
        await subscription.start(deadline)
        self._subscriptions.add(subscription)
        return subscription

    # -- closing ------------------------------------------------------------------------------

    async def close(self) -> None:
        for subscription in list(self._subscriptions):
            await subscription.close()
        if self._producer is not None:
            producer, self._producer = self._producer, None
            # Every publish already returned a result for each message, so nothing waits on these
            # confirmations any more; flush briefly, then stop even if the cluster is gone.
            await _stop_producer(producer, self.publish_timeout)
        if self._admin is not None:
            admin, self._admin = self._admin, None
            await _quietly(admin.close(), self.connect_timeout)
        for task in list(self._orphans):
            await _quietly(task, self.connect_timeout)

    def _stop_in_background(self, producer: AIOKafkaProducer) -> None:
        task = asyncio.get_running_loop().create_task(_stop_producer(producer, self.publish_timeout))
        self._orphans.add(task)  # held so it is not collected, and awaited by close()
        task.add_done_callback(self._orphans.discard)


async def _stop_producer(producer: AIOKafkaProducer, timeout: float) -> None:
    """Stop ``producer``, waiting up to ``timeout`` seconds for its unconfirmed batches, even when the cluster is gone."""
    try:
        await asyncio.wait_for(producer.flush(), timeout)
    except (KafkaError, OSError, TimeoutError):
        # An idempotent producer never expires its batches, so stop() would wait for them forever
        # while the cluster is down: cancel its sender and drop the connections instead.
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            await _quietly(sender.close(), timeout)
        await _quietly(producer.client.close(), timeout)
        producer._closed = True  # what stop() would have set; keeps aiokafka from warning at exit
        return
    await _quietly(producer.stop(), timeout)


async def _quietly(awaitable: Any, timeout: float) -> None:
    try:
        await asyncio.wait_for(awaitable, timeout)
    except (KafkaError, OSError, TimeoutError) as exc:
        log.debug("ignored while closing Kafka client: %r", exc)


@dataclass(eq=False)
class _Partition:
    """What this member knows of one assigned partition; replaced on every assignment (a lease)."""

    tp: TopicPartition
    #: offset -> acked, in the order the records were delivered (which is offset order)
    in_flight: dict[int, bool] = field(default_factory=dict)
    #: the next offset to commit (one past the highest offset whose predecessors were all acked)
    acked_up_to: int = -1
    committed: int = -1
    attempts: dict[int, int] = field(default_factory=dict)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, subscription: KafkaSubscription) -> None:
        self.subscription = subscription

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        # Every ack awaited its commit, so nothing acked is left to commit here. Deliveries still
        # in flight lose their lease: their acks are ignored and the new owner gets them again.
        for tp in revoked:
            self.subscription._partitions.pop(tp, None)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        for tp in assigned:
            self.subscription._partitions[tp] = _Partition(tp)


class KafkaSubscription:
    """One member of a Kafka consumer group; iterate for deliveries, ``close`` to leave the group."""

    def __init__(self, broker: KafkaBroker, topics: dict[str, str], group: str) -> None:
        self.broker = broker
        self.topics = topics  # Kafka topic -> tidings topic
        self.group = group
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=broker.bootstrap_servers,
            client_id=f"{broker.client_id}-{group}",
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            # A member that vanishes without leaving is declared dead after the session timeout;
            # then its partitions, from the committed offsets, go to the next member.
            session_timeout_ms=broker.session_timeout_ms,
            heartbeat_interval_ms=broker.heartbeat_interval_ms,
            **broker._security,
        )
        self._partitions: dict[TopicPartition, _Partition] = {}
        # Fetched records wait here, not in a generator's locals, so abandoning one ``async for``
        # loses nothing: the next iteration continues where it stopped.
        self._fetched: deque[tuple[_Partition, ConsumerRecord[bytes, bytes]]] = deque()
        self._retry: deque[tuple[_Partition, Delivery]] = deque()
        self._timers: set[asyncio.Task[None]] = set()
        self._commit_lock = asyncio.Lock()
        self._closed = False

    async def start(self, deadline: float) -> None:
        try:
            await asyncio.wait_for(self._consumer.start(), KafkaBroker._remaining(deadline))
        except (KafkaError, OSError, TimeoutError) as exc:
            await _quietly(self._consumer.stop(), 1.0)
            raise BrokerUnavailable(f"cannot reach Kafka for consumer group {self.group!r}: {_explain(exc)}") from exc
        # Subscribed after start(), so joining the group happens in the background: a join can
        # wait a whole session timeout for a dead member, and subscribe() should not. Nothing is
        # missed meanwhile: a group without committed offsets starts from the earliest message.
        self._consumer.subscribe(list(self.topics), listener=_Rebalance(self))

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self._deliveries()

    async def _deliveries(self) -> AsyncIterator[Delivery]:
        while not self._closed:
            if self._retry:
                lease, delivery = self._retry.popleft()
                if self._partitions.get(lease.tp) is lease:
                    yield delivery
                # else the partition went to another member, which delivers it again from Kafka
                continue
            if self._fetched:
                lease, record = self._fetched.popleft()
                if self._partitions.get(lease.tp) is not lease:
                    continue  # fetched before a rebalance took the partition away
                yield self._delivery(lease, record)
                continue
            try:
                batches = await self._consumer.getmany(timeout_ms=200, max_records=500)
            except ConsumerStoppedError:
                return  # closed while we waited for records
            except KafkaError as exc:
                if self._closed:
                    return
                log.warning("Kafka consumer group %r: fetch failed (%s), retrying", self.group, exc)
                await asyncio.sleep(0.5)
                continue
            for tp, records in batches.items():
                lease = self._partitions.get(tp)
                if lease is not None:
                    self._fetched.extend((lease, record) for record in records)

    def _delivery(self, lease: _Partition, record: ConsumerRecord[bytes, bytes]) -> Delivery:
        headers: dict[str, str] = {}
        for name, value in record.headers:
            headers[name] = value.decode(errors="replace") if value is not None else ""
        topic = headers.pop(TOPIC_HEADER, None) or self.topics.get(record.topic, record.topic)
        key = headers.pop(KEY_HEADER, None)
        if key is None:
            key = record.key.decode(errors="replace") if record.key is not None else ""
        partition = headers.pop(PARTITION_HEADER, None)
        # A record from a producer that is not tidings has no event id: name it by its position.
        event_id = headers.get(EVENT_ID_HEADER) or f"{record.topic}:{record.partition}:{record.offset}"
        lease.in_flight.setdefault(record.offset, False)
        attempt = lease.attempts[record.offset] = lease.attempts.get(record.offset, 0) + 1
        return Delivery(
            topic=topic,
            key=key,
            partition=int(partition) if partition is not None and partition.isdigit() else record.partition,
            event_id=event_id,
            headers=headers,
            payload=record.value if record.value is not None else b"",
            attempt=attempt,
            _settle=_Settle(self, lease, record.offset),
        )

    async def _ack(self, lease: _Partition, offset: int) -> None:
        if self._partitions.get(lease.tp) is not lease or offset not in lease.in_flight:
            return  # no longer ours (rebalanced or closed): the new owner delivers it again
        lease.in_flight[offset] = True
        lease.attempts.pop(offset, None)
        # The committed offset may only pass messages that are all acked: pop the acked prefix
        # (in_flight is in delivery order, which is offset order within a partition).
        for pending, acked in list(lease.in_flight.items()):
            if not acked:
                break
            del lease.in_flight[pending]
            lease.acked_up_to = pending + 1
        await self._commit()

    async def _commit(self) -> None:
        """Commit every partition whose acked prefix grew; concurrent acks share one commit."""
        async with self._commit_lock:
            offsets = {tp: p.acked_up_to for tp, p in self._partitions.items() if p.acked_up_to > p.committed}
            if not offsets:
                return  # a commit that ran while we waited for the lock covered ours
            try:
                await asyncio.wait_for(self._consumer.commit(offsets), self.broker.publish_timeout)
            except (CommitFailedError, IllegalStateError) as exc:
                # The group rebalanced under us: these partitions belong to another member now,
                # which starts from the last successful commit (at-least-once; the inbox de-duplicates).
                log.warning("Kafka consumer group %r: commit lost to a rebalance (%s)", self.group, exc)
                return
            except (KafkaError, OSError, TimeoutError) as exc:
                raise BrokerUnavailable(
                    f"Kafka consumer group {self.group!r} could not commit its acks: {_explain(exc)}; "
                    "the messages may be delivered again"
                ) from exc
            for tp, offset in offsets.items():
                if tp in self._partitions:
                    self._partitions[tp].committed = max(self._partitions[tp].committed, offset)

    async def _nack(self, delivery: Delivery, lease: _Partition, offset: int, delay: float) -> None:
        # The offset stays un-acked, so nothing past it is committed: if this member dies before
        # the retry, the next member of the group gets the message from Kafka instead.
        async def later() -> None:
            await asyncio.sleep(delay)
            if self._partitions.get(lease.tp) is lease and offset in lease.in_flight:
                attempt = lease.attempts[offset] = lease.attempts.get(offset, 1) + 1
                delivery.attempt = attempt
                self._retry.append((lease, delivery))

        timer = asyncio.get_running_loop().create_task(later())
        self._timers.add(timer)  # held so the task is not collected before it fires
        timer.add_done_callback(self._timers.discard)

    async def close(self) -> None:
        """Leave the group without committing anything unacked, so it goes to the next member."""
        if self._closed:
            return
        self._closed = True
        for timer in list(self._timers):
            timer.cancel()
        self._partitions.clear()
        self._fetched.clear()
        self._retry.clear()
        await _quietly(self._consumer.stop(), self.broker.connect_timeout)
        self.broker._subscriptions.discard(self)


class _Settle:
    def __init__(self, subscription: KafkaSubscription, lease: _Partition, offset: int) -> None:
        self.subscription = subscription
        self.lease = lease
        self.offset = offset

    async def ack(self, delivery: Delivery) -> None:
        await self.subscription._ack(self.lease, self.offset)

    async def nack(self, delivery: Delivery, delay: float) -> None:
        await self.subscription._nack(delivery, self.lease, self.offset, delay)
