"""The NATS JetStream broker (``nats://host:4222``): one file-backed stream, one pull consumer per group and topic.

Subjects. Every message goes to ``{prefix}.{topic}.{partition}`` (prefix ``tidings`` by default) in
one stream (``TIDINGS``) that captures ``{prefix}.>``. A topic becomes subject tokens as follows:
letters, digits, ``_`` and ``-`` stay; dots stay as token separators (``billing.licenses`` is two
tokens) unless they would make an empty token; every other character, ``~`` included, becomes
``~XX`` per UTF-8 byte (``café`` → ``caf~C3~A9``). The mapping is one-to-one, so two topics never
share a subject, and a consumer's filter ``{prefix}.{topic}.*`` matches exactly one topic.

Headers. The message's own headers travel as NATS headers and arrive identical: values NATS would
alter (surrounding whitespace, control characters) are sent base64-encoded behind ``=?b64?`` and
decoded on arrival. ``Nats-Msg-Id`` carries the publication id (the event id; for an operator's
replay, the event id and the replay number), so the stream drops a re-publish of the same
publication within its duplicate window (a relay retry after a lost confirmation) but stores a
replay; a delivery's event id is the envelope's (``tidings-event_id``), else the message id.
``tidings-topic``, ``tidings-key`` and ``tidings-partition`` carry the routing fields (so a
message may not bring headers of those names). Header names starting with ``Nats-`` are refused, because they would
change how JetStream stores the message.

Consumers. ``subscribe(topics, group)`` binds one durable pull consumer per topic (named
``{group}~~{topic}``, escaped like subjects but with dots escaped too): explicit acks, unlimited
deliveries (dead-lettering is the consumer's job), delivering all of the topic's history to a new
group. One consumer per topic rather than one multi-filter consumer per group because
``filter_subjects`` needs nats-server 2.10, and because a group can then add a topic without
editing a consumer. The subscription keeps a bounded pull request outstanding and hands messages
on as they arrive. While this member lives, everything it holds (buffered or handed out and not
yet settled) is kept from redelivery by progress heartbeats (``+WPI``), up to ``max_hold`` seconds;
when it dies those stop, and after ``ack_wait`` the server redelivers to another member.

Takeover. A member that starts on a durable consumer with messages still unsettled
(``num_ack_pending`` P > 0, all at or below the consumer's delivered stream sequence D) left by a
member that died or left (tidings reads each group with one member at a time), yields nothing
until the server has redelivered those P messages to it, and then hands on what it collected in
stream order: the P first, then everything newer it pulled meanwhile. JetStream redelivers in
order of ack deadline, in chunks as deadlines pass, which progress notes scramble, and a new
pull gets new messages before redeliveries that are not yet due; without this a key's newer
messages overtook its older ones after every crash. While collecting, the member keeps pulling
(nothing is yielded, so every message is delivered once and counted once) and keeps everything
alive with progress notes. The wait also ends when the server's ack floor reaches D, when it
counts no more unsettled messages than the member holds (another live member held some and
settled them), or after ``2 * ack_wait + 5`` seconds at the latest.

Reconnects. The client reconnects forever on its own. While it is disconnected ``publish`` answers
BrokerUnavailable at once, and every wait for a confirmation is bounded by ``publish_timeout``.

URL options (query string, or keyword arguments of ``from_url``): ``stream``, ``prefix``,
``ack_wait``, ``max_hold``, ``duplicate_window``, ``max_age``, ``replicas``, ``publish_timeout``,
``connect_timeout``, ``batch``, ``max_ack_pending``, ``max_message_bytes``, ``name``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import itertools
import json
import logging
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, Error as NatsError
from nats.js import api
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from tidings.brokers.base import BrokerConfigurationError, BrokerError, BrokerUnavailable, Delivery, MessageRejected, OutgoingMessage
from tidings.messaging.redaction import redact_url

__all__ = ["NatsBroker", "NatsSubscription", "consumer_name", "from_url", "subject_token"]

log = logging.getLogger("tidings.brokers.nats")

DEFAULT_STREAM = "TIDINGS"
DEFAULT_PREFIX = "tidings"
#: nats-server's default max_payload; the real value comes from the server once connected.
DEFAULT_MAX_PAYLOAD = 1024 * 1024
#: Room kept for headers (envelope, routing, Nats-Msg-Id) within the server's max_payload.
HEADER_ALLOWANCE = 4096

H_TOPIC = "tidings-topic"
H_KEY = "tidings-key"
H_PARTITION = "tidings-partition"
_MSG_ID = api.Header.MSG_ID.value
_EVENT_ID_HEADER = "tidings-event_id"  # the envelope's event id, as brokers/headers.py writes it
_EXPECTED_STREAM = api.Header.EXPECTED_STREAM.value
_TRANSPORT_HEADERS = frozenset({H_TOPIC, H_KEY, H_PARTITION, _MSG_ID, _EXPECTED_STREAM})
_B64 = "=?b64?"

# JetStream error codes that concern the message itself, so retrying it cannot help.
_REJECTING_ERR_CODES = {
    10054: "larger than the stream's max_msg_size",
    10097: "headers larger than the stream allows",
}

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_UNSAFE_VALUE = re.compile(r"[\x00-\x1f\x7f]")
# Header names already found valid (bounded; see _prepare).
_GOOD_NAMES: set[str] = set()
_KEPT = re.compile(r"[A-Za-z0-9_-]")
_PREFIX = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_MAX_CONSUMER_NAME = 200

_OPTION_TYPES: dict[str, type] = {
    "stream": str,
    "prefix": str,
    "ack_wait": float,
    "max_hold": float,
    "duplicate_window": float,
    "max_age": float,
    "replicas": int,
    "publish_timeout": float,
    "connect_timeout": float,
    "batch": int,
    "max_ack_pending": int,
    "max_message_bytes": int,
    "name": str,
}


def from_url(url: str, **options: Any) -> NatsBroker:
    """A NatsBroker for ``nats://[user:pass@]host[:port][,host2:port…][?option=value…]`` (not yet connected)."""
    parts = urlsplit(url)
    if parts.scheme != "nats" or not url.startswith("nats://"):
        raise BrokerConfigurationError(f"not a NATS URL: {redact_url(url)!r}; use nats://[user:password@]host:4222")
    query: dict[str, Any] = {}
    for name, value in parse_qsl(parts.query):
        if name not in _OPTION_TYPES:
            known = ", ".join(sorted(_OPTION_TYPES))
            raise BrokerConfigurationError(
                f"unknown NATS broker option {name!r} in {redact_url(url)!r}; known options: {known}"
            )
        try:
            query[name] = _OPTION_TYPES[name](value)
        except ValueError:
            raise BrokerConfigurationError(
                f"NATS broker option {name}={value!r} is not a valid {_OPTION_TYPES[name].__name__} "
                f"(in {redact_url(url)!r})"
            ) from None
    hosts = parts.netloc or "127.0.0.1:4222"
    servers = [f"nats://{host}" for host in hosts.split(",") if host]
    try:
        return NatsBroker(servers, url=url, **(query | options))
    except ValueError as exc:  # a stream or prefix the server would refuse
        raise BrokerConfigurationError(str(exc)) from None


@functools.lru_cache(maxsize=4096)
def subject_token(topic: str) -> str:
    """The subject tokens for ``topic``: a one-to-one escape that only yields valid, non-empty tokens."""
    if not topic:
        raise ValueError("a topic name must not be empty")
    keep_dots = all(topic.split("."))
    return "".join(
        char if _KEPT.fullmatch(char) or (char == "." and keep_dots) else "".join(f"~{b:02X}" for b in char.encode())
        for char in topic
    )


def consumer_name(group: str, topic: str) -> str:
    """The durable consumer of ``group`` on ``topic``: both escaped (no dots), joined by ``~~``."""
    if not group:
        raise ValueError("a consumer group name must not be empty")
    # ``~`` is always followed by two hex digits in an escape, so ``~~`` only ever separates.
    name = f"{subject_token(group).replace('.', '~2E')}~~{subject_token(topic).replace('.', '~2E')}"
    if len(name) > _MAX_CONSUMER_NAME:
        # Consumer names are directory names on the server; keep them short and still unique.
        name = f"{name[: _MAX_CONSUMER_NAME - 17]}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"
    return name


def _encode_value(value: str) -> str:
    # nats-py strips values and turns CR/LF into spaces; send such values (and any value that
    # looks like our escape) base64-encoded so they arrive exactly as given.
    if value.isprintable() and value[:1] != " " and value[-1:] != " " and not value.startswith(_B64):
        return value  # the common case, decided without a regex (it runs for every header)
    if value != value.strip() or _UNSAFE_VALUE.search(value) or value.startswith(_B64):
        return _B64 + base64.b64encode(value.encode("utf-8", "surrogatepass")).decode("ascii")
    return value


def _decode_value(value: str) -> str:
    if value.startswith(_B64):
        with contextlib.suppress(ValueError):
            return base64.b64decode(value[len(_B64) :], validate=True).decode("utf-8", "surrogatepass")
    return value


def _covers(pattern: str, prefix: str) -> bool:
    """Whether the stream subject ``pattern`` already captures every subject under ``prefix.>``."""
    wanted = prefix.split(".")
    for index, token in enumerate(pattern.split(".")):
        if token == ">":
            return True
        if index >= len(wanted) or (token != "*" and token != wanted[index]):
            return False
    return False


@dataclass(frozen=True, slots=True)
class _AckError:
    """What JetStream answered instead of a publish confirmation."""

    status: int
    err_code: int | None
    description: str


class NatsBroker:
    """A Broker over NATS JetStream (``nats://``): pipelined, de-duplicated publishes; durable pull consumers."""

    def __init__(
        self,
        servers: Sequence[str] = ("nats://127.0.0.1:4222",),
        *,
        url: str | None = None,
        stream: str = DEFAULT_STREAM,
        prefix: str = DEFAULT_PREFIX,
        ack_wait: float = 5.0,
        max_hold: float = 300.0,
        duplicate_window: float = 120.0,
        max_age: float | None = None,
        replicas: int = 1,
        publish_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        batch: int = 100,
        max_ack_pending: int = 10_000,
        max_message_bytes: int | None = None,
        name: str = "tidings",
        reconnect_wait: float = 0.25,
    ) -> None:
        if not stream or any(c in stream for c in ">*. /\\\t\r\n"):
            raise ValueError(f"invalid JetStream stream name {stream!r}: no dots, spaces, wildcards or slashes")
        if not _PREFIX.fullmatch(prefix):
            raise ValueError(f"invalid subject prefix {prefix!r}: dot-separated tokens of letters, digits, '_' or '-'")
        self.servers = list(servers)
        self.url = url or ",".join(self.servers)
        self.stream = stream
        self.prefix = prefix
        self.ack_wait = ack_wait
        self.max_hold = max_hold
        self.duplicate_window = duplicate_window
        self.max_age = max_age
        self.replicas = replicas
        self.publish_timeout = publish_timeout
        self.connect_timeout = connect_timeout
        self.batch = batch
        self.max_ack_pending = max_ack_pending
        self.name = name
        self.reconnect_wait = reconnect_wait
        self._max_message_bytes = max_message_bytes
        self._stream_max_msg_size = -1
        self._stream_ready = False
        self._nc: NatsClient | None = None
        self._reply_prefix = ""
        self._tokens = itertools.count()
        self._acks: dict[str, asyncio.Future[_AckError | None]] = {}
        self._subscriptions: set[NatsSubscription] = set()
        self._connected = asyncio.Event()
        self._last_error: BaseException | None = None

    def __repr__(self) -> str:
        return f"NatsBroker({self._where()}, stream={self.stream!r})"

    def _where(self) -> str:
        # Never put credentials from the URL into logs or errors.
        return redact_url(",".join(self.servers))

    @property
    def max_message_bytes(self) -> int:
        """The largest payload accepted: the server's max_payload (and the stream's limit) less room for headers."""
        limits = [(self._nc.max_payload if self._nc is not None else DEFAULT_MAX_PAYLOAD) - HEADER_ALLOWANCE]
        if self._stream_max_msg_size > 0:
            limits.append(self._stream_max_msg_size - HEADER_ALLOWANCE)
        if self._max_message_bytes is not None:
            limits.append(self._max_message_bytes)
        return max(0, min(limits))

    # -- connection -----------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect (reconnecting forever afterwards) and create or update the stream; BrokerUnavailable if down."""
        if self._nc is not None:
            return
        nc = NatsClient()
        try:
            # nats-py retries the first connect forever when told to reconnect forever, so the
            # first connect is bounded here; after it, reconnects go on until close().
            await asyncio.wait_for(
                nc.connect(
                    servers=self.servers,
                    name=self.name,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=self.reconnect_wait,  # type: ignore[arg-type]
                    connect_timeout=max(1, int(self.connect_timeout)),
                    ping_interval=10,
                    max_outstanding_pings=3,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                ),
                self.connect_timeout,
            )
        except (TimeoutError, OSError, NatsError) as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            cause = self._last_error if isinstance(exc, TimeoutError) and self._last_error is not None else exc
            raise BrokerUnavailable(
                f"cannot connect to NATS at {self._where()} within {self.connect_timeout} s "
                f"({type(cause).__name__}: {cause}); is nats-server running (with -js for JetStream)?"
            ) from exc
        self._nc = nc
        self._connected.set()
        # One wildcard inbox receives every publish confirmation; each publish has its own token.
        self._reply_prefix = nc.new_inbox()
        await nc.subscribe(f"{self._reply_prefix}.*", cb=self._on_publish_ack)
        try:
            await self._ensure_stream()
        except BaseException:
            self._nc = None
            self._connected.clear()
            await nc.close()
            raise

    async def close(self) -> None:
        """Leave every subscription, fail waiting publishes, close the connection."""
        for subscription in list(self._subscriptions):
            await subscription.close()
        nc, self._nc = self._nc, None
        self._stream_ready = False
        if nc is None:
            return
        if nc.is_connected:
            with contextlib.suppress(Exception):
                await nc.flush(timeout=2)  # naks and progress notes already sent should reach the server
        with contextlib.suppress(Exception):
            await nc.close()
        for future in self._acks.values():
            if not future.done():
                future.set_result(_AckError(503, None, "the broker was closed before the server confirmed"))
        self._acks.clear()

    async def _on_error(self, exc: Exception) -> None:
        self._last_error = exc
        log.debug("NATS %s: %s: %s", self._where(), type(exc).__name__, exc)

    async def _on_disconnected(self) -> None:
        self._connected.clear()
        if self._nc is None:
            return  # closing
        log.warning("NATS %s: disconnected; reconnecting", self._where())

    async def _on_reconnected(self) -> None:
        self._connected.set()
        log.info("NATS %s: reconnected", self._where())
        # Pull requests may have died with the old connection (or the old server): ask again now
        # rather than after they would have expired.
        for subscription in self._subscriptions:
            subscription._pull_again()

    def _client(self) -> NatsClient:
        if self._nc is None:
            raise BrokerUnavailable(f"the NATS broker {self._where()} is not connected; call connect() first")
        return self._nc

    def _jetstream(self) -> Any:
        """The JetStream API of the connection; BrokerUnavailable at once while reconnecting."""
        nc = self._client()
        if not nc.is_connected:
            raise BrokerUnavailable(f"NATS {self._where()} is unreachable; reconnecting")
        return nc.jetstream(timeout=self.publish_timeout)

    # -- stream ---------------------------------------------------------------------------------

    async def _ensure_stream(self) -> None:
        """Create the stream if missing; widen its subjects or duplicate window if it has less than we need."""
        js = self._jetstream()
        subject = f"{self.prefix}.>"
        wanted = api.StreamConfig(
            name=self.stream,
            description="tidings integration events (created by tidings)",
            subjects=[subject],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.OLD,
            duplicate_window=self.duplicate_window,
            max_age=self.max_age or 0,
            num_replicas=self.replicas,
        )
        try:
            try:
                info = await js.stream_info(self.stream)
            except NotFoundError:
                try:
                    info = await js.add_stream(wanted)
                except APIError as exc:
                    if exc.err_code != 10058:  # 10058: created meanwhile by another process
                        raise
                    info = await js.stream_info(self.stream)
            config = info.config
            changes: dict[str, Any] = {}
            if not any(_covers(pattern, self.prefix) for pattern in config.subjects or []):
                changes["subjects"] = [*(config.subjects or []), subject]
            if (config.duplicate_window or 0) < self.duplicate_window:
                changes["duplicate_window"] = self.duplicate_window
            if self.max_age is not None and config.max_age != self.max_age:
                changes["max_age"] = self.max_age
            if changes:
                log.info("NATS stream %s: updating %s", self.stream, ", ".join(sorted(changes)))
                info = await js.update_stream(config.evolve(**changes))
            if info.config.storage != api.StorageType.FILE:
                log.warning("NATS stream %s keeps messages in memory: a server restart loses them", self.stream)
        except APIError as exc:
            if isinstance(exc, ServiceUnavailableError) or exc.code == 503:
                raise BrokerUnavailable(
                    f"JetStream does not answer on NATS {self._where()} ({exc.description or exc}); "
                    "is the server started with -js, and has it finished starting?"
                ) from exc
            raise BrokerError(
                f"cannot create or update the JetStream stream {self.stream!r} for subjects {subject!r} on "
                f"{self._where()}: {exc.description or exc} (err_code {exc.err_code}); if another stream already "
                "captures these subjects, choose another prefix (?prefix=…) or stream (?stream=…)"
            ) from exc
        except (NatsError, TimeoutError) as exc:
            raise BrokerUnavailable(f"NATS {self._where()} did not answer about stream {self.stream!r}: {exc!r}") from exc
        self._stream_max_msg_size = info.config.max_msg_size or -1
        self._stream_ready = True

    # -- publishing -----------------------------------------------------------------------------

    def subject(self, topic: str, partition: int) -> str:
        """The subject a message of ``topic`` and ``partition`` is published to."""
        return f"{self.prefix}.{subject_token(topic)}.{int(partition)}"

    def _prepare(self, message: OutgoingMessage, max_payload: int) -> tuple[str, dict[str, str]]:
        """Subject and headers for ``message``; MessageRejected if NATS could not take it as it is."""
        what = f"{message.topic} message {message.event_id}"
        if len(message.payload) > self.max_message_bytes:
            raise MessageRejected(
                f"{what} is {len(message.payload)} bytes, over the NATS broker's limit of {self.max_message_bytes} "
                f"(server max_payload {max_payload} less {HEADER_ALLOWANCE} for headers); raise max_payload in the "
                "nats-server config or publish a reference to the data instead"
            )
        if not message.topic:
            raise MessageRejected(f"message {message.event_id} has an empty topic")
        headers: dict[str, str] = {}
        for name, value in message.headers.items():
            if name not in _GOOD_NAMES:
                if not _HEADER_NAME.fullmatch(name):
                    raise MessageRejected(f"{what}: header name {name!r} is not a valid NATS header name (RFC 7230 token)")
                if name.lower().startswith("nats-"):
                    raise MessageRejected(f"{what}: header {name!r} is reserved for the NATS server")
                if name in _TRANSPORT_HEADERS:
                    raise MessageRejected(f"{what}: header {name!r} is used by the NATS broker itself for routing")
                if len(_GOOD_NAMES) < 10_000:
                    # Messages carry the same few names again and again: check each name once.
                    _GOOD_NAMES.add(name)
            headers[name] = _encode_value(value if type(value) is str else str(value))
        headers[H_TOPIC] = _encode_value(message.topic)
        headers[H_KEY] = _encode_value(message.key)
        headers[H_PARTITION] = str(int(message.partition))
        # The stream de-duplicates by this id within its duplicate window: a relay's retry after
        # a lost confirmation is stored once, an operator's replay (a new publication id) again.
        headers[_MSG_ID] = _encode_value(message.publication_id)
        # Refuse to land in another stream that happens to capture the subject.
        headers[_EXPECTED_STREAM] = self.stream
        size = len(message.payload) + 12  # b"NATS/1.0\r\n\r\n"
        for name, value in headers.items():
            size += len(name) + 4 + (len(value) if value.isascii() else len(value.encode()))  # ": " and CRLF
        limit = min(max_payload, self._stream_max_msg_size) if self._stream_max_msg_size > 0 else max_payload
        if size > limit:
            raise MessageRejected(f"{what} is {size} bytes with its headers, over the NATS limit of {limit}")
        return self.subject(message.topic, message.partition), headers

    async def publish(self, messages: Sequence[OutgoingMessage]) -> list[BaseException | None]:
        """Send every message, then wait (at most ``publish_timeout``) for all confirmations at once."""
        nc = self._nc
        if nc is None or nc.is_closed:
            return [BrokerUnavailable(f"the NATS broker {self._where()} is not connected") for _ in messages]
        if not nc.is_connected:
            # Do not queue into the client's reconnect buffer: the caller retries in order anyway.
            return [BrokerUnavailable(f"NATS {self._where()} is unreachable; reconnecting") for _ in messages]
        if not self._stream_ready:
            try:
                await self._ensure_stream()
            except BrokerError as exc:
                return [BrokerUnavailable(str(exc)) for _ in messages]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout
        results: list[BaseException | None] = [None] * len(messages)
        waiting: dict[int, tuple[str, asyncio.Future[_AckError | None]]] = {}
        try:
            for index, message in enumerate(messages):
                try:
                    subject, headers = self._prepare(message, nc.max_payload)
                except MessageRejected as exc:
                    results[index] = exc
                    continue
                token = str(next(self._tokens))
                future: asyncio.Future[_AckError | None] = loop.create_future()
                self._acks[token] = future
                try:
                    await nc.publish(subject, message.payload, reply=f"{self._reply_prefix}.{token}", headers=headers)
                except (NatsError, OSError) as exc:
                    self._acks.pop(token, None)
                    results[index] = BrokerUnavailable(f"{message.topic} message {message.event_id} not sent: {exc!r}")
                    continue
                waiting[index] = (token, future)
            if waiting:
                await asyncio.wait([future for _, future in waiting.values()], timeout=max(0.0, deadline - loop.time()))
            for index, (token, future) in waiting.items():
                message = messages[index]
                what = f"{message.topic} message {message.event_id}"
                if not future.done():
                    results[index] = BrokerUnavailable(
                        f"NATS {self._where()} did not confirm {what} within {self.publish_timeout} s"
                    )
                    continue
                error = future.result()
                if error is None:
                    continue
                if error.err_code in _REJECTING_ERR_CODES:
                    why = _REJECTING_ERR_CODES[error.err_code]
                    results[index] = MessageRejected(f"JetStream refused {what}: {why} ({error.description})")
                elif error.status == 503:
                    self._stream_ready = False  # the stream may have been deleted: check before the next publish
                    results[index] = BrokerUnavailable(
                        f"no JetStream stream answered for {what} on {self._where()}: {error.description}"
                    )
                else:
                    results[index] = BrokerUnavailable(
                        f"JetStream did not store {what}: {error.description} (err_code {error.err_code})"
                    )
        finally:
            for token, future in waiting.values():
                self._acks.pop(token, None)
                future.cancel()
        return results

    async def _on_publish_ack(self, msg: Msg) -> None:
        future = self._acks.pop(msg.subject.rsplit(".", 1)[-1], None)
        if future is None or future.done():
            return  # a confirmation that arrived after its publish gave up waiting
        headers = msg.headers or {}
        if headers.get(api.Header.STATUS.value) == "503":
            future.set_result(_AckError(503, None, "no responders (no stream captures the subject, or JetStream is down)"))
            return
        if msg.data[:1] == b"{" and b'"error"' not in msg.data:
            future.set_result(None)  # {"stream":…,"seq":…}: stored (or a duplicate already stored); no need to parse
            return
        try:
            body = json.loads(msg.data)
        except ValueError:
            future.set_result(_AckError(500, None, f"unreadable confirmation {msg.data[:200]!r}"))
            return
        error = body.get("error") if isinstance(body, dict) else None
        if error:
            future.set_result(_AckError(int(error.get("code", 500)), error.get("err_code"), str(error.get("description", error))))
        else:
            future.set_result(None)  # stored, or a duplicate of one already stored: both are confirmed

    # -- subscribing ----------------------------------------------------------------------------

    async def subscribe(self, topics: Sequence[str], group: str) -> NatsSubscription:
        """Join ``group`` on ``topics``: one durable pull consumer per topic, created on first use."""
        if not topics:
            raise ValueError("subscribe needs at least one topic")
        subscription = NatsSubscription(self, list(dict.fromkeys(topics)), group)
        self._subscriptions.add(subscription)
        try:
            await subscription._start()
        except BaseException:
            await subscription.close()
            raise
        return subscription

    async def _ensure_consumer(self, topic: str, group: str) -> str:
        """Create the group's durable consumer on ``topic`` if missing, or bring its timings up to date."""
        js = self._jetstream()
        durable = consumer_name(group, topic)
        filter_subject = f"{self.prefix}.{subject_token(topic)}.*"
        wanted = api.ConsumerConfig(
            durable_name=durable,
            description=f"tidings group {group!r} on topic {topic!r}",
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=-1,
            filter_subject=filter_subject,
            max_ack_pending=self.max_ack_pending,
            replay_policy=api.ReplayPolicy.INSTANT,
        )
        try:
            try:
                info = await js.consumer_info(self.stream, durable)
            except NotFoundError:
                await js.add_consumer(self.stream, wanted)
                return durable
            config = info.config
            if config.filter_subject != filter_subject:
                raise BrokerError(
                    f"the JetStream consumer {durable!r} on stream {self.stream!r} filters {config.filter_subject!r}, "
                    f"not {filter_subject!r}; delete it (nats consumer rm {self.stream} {durable}) or use another group"
                )
            if (config.ack_wait, config.max_ack_pending, config.max_deliver) != (self.ack_wait, self.max_ack_pending, -1):
                await js.add_consumer(
                    self.stream, config.evolve(ack_wait=self.ack_wait, max_ack_pending=self.max_ack_pending, max_deliver=-1)
                )
        except APIError as exc:
            if isinstance(exc, ServiceUnavailableError) or exc.code == 503:
                raise BrokerUnavailable(f"JetStream on {self._where()} is unavailable: {exc.description or exc}") from exc
            raise BrokerError(
                f"cannot create the JetStream consumer {durable!r} for group {group!r} on topic {topic!r}: "
                f"{exc.description or exc} (err_code {exc.err_code})"
            ) from exc
        except (NatsError, TimeoutError) as exc:
            raise BrokerUnavailable(f"NATS {self._where()} did not answer about consumer {durable!r}: {exc!r}") from exc
        return durable


@dataclass(slots=True)
class _Held:
    """A message this member received and has not settled yet (buffered, or with its handler)."""

    msg: Msg
    since: float


_CLOSED = object()


class NatsSubscription:
    """One member of a consumer group: pulls from each topic's durable consumer, yields Deliveries."""

    def __init__(self, broker: NatsBroker, topics: list[str], group: str) -> None:
        self.broker = broker
        self.topics = topics
        self.group = group
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._pullers: list[_Puller] = []
        self._held: dict[str, _Held] = {}  # by the message's ack subject, unique per delivery
        self._keepalive: asyncio.Task[None] | None = None
        self._closed = False
        self._failure: BaseException | None = None
        # Pulling starts with the first iteration: a member that never reads takes nothing.
        self._reading = asyncio.Event()

    async def _start(self) -> None:
        for topic in self.topics:
            durable = await self.broker._ensure_consumer(topic, self.group)
            puller = _Puller(self, topic, durable)
            await puller.start()
            self._pullers.append(puller)
        self._keepalive = asyncio.get_running_loop().create_task(self._keep_held_alive())

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self._deliveries()

    async def _deliveries(self) -> AsyncIterator[Delivery]:
        # No try/finally here: a caller that breaks out of one `async for` may iterate again later
        # and must find the queue as it left it.
        self._reading.set()
        while True:
            item = await self._queue.get()
            if item is _CLOSED:
                self._queue.put_nowait(_CLOSED)  # for any other iterator of this subscription
                if self._failure is not None:
                    raise self._failure
                return
            puller, msg = item
            puller.taken()
            if msg.reply not in self._held:
                continue  # the subscription closed while it waited in the queue
            yield self._delivery(msg)

    def _delivery(self, msg: Msg) -> Delivery:
        raw = dict(msg.headers or {})
        subject_tokens = msg.subject.rsplit(".", 1)
        topic = _decode_value(raw.pop(H_TOPIC, "")) or subject_tokens[0].removeprefix(f"{self.broker.prefix}.")
        key = _decode_value(raw.pop(H_KEY, ""))
        try:
            partition = int(raw.pop(H_PARTITION, None) or subject_tokens[-1])
        except ValueError:
            partition = 0
        metadata = msg.metadata
        message_id = raw.pop(_MSG_ID, "")
        # A replay's message id is not its event id: the envelope's is (the one inboxes know).
        event_id = _decode_value(raw.get(_EVENT_ID_HEADER) or message_id) or f"{self.broker.stream}:{metadata.sequence.stream}"
        for name in _TRANSPORT_HEADERS:
            raw.pop(name, None)
        return Delivery(
            topic=topic,
            key=key,
            partition=partition,
            event_id=event_id,
            headers={name: _decode_value(value) for name, value in raw.items()},
            payload=bytes(msg.data),
            attempt=max(1, metadata.num_delivered),
            _settle=_Settle(self, msg),
        )

    def _arrived(self, puller: _Puller, msg: Msg) -> None:
        if self._closed:
            return
        self._held[msg.reply] = _Held(msg, asyncio.get_running_loop().time())
        self._queue.put_nowait((puller, msg))

    def _fail(self, exc: BaseException) -> None:
        """End iteration with ``exc`` after what is already queued (the consumer is gone on the server)."""
        if self._failure is None:
            self._failure = exc
            self._queue.put_nowait(_CLOSED)

    def _pull_again(self) -> None:
        for puller in self._pullers:
            puller.wake()

    async def _keep_held_alive(self) -> None:
        # While this member lives, tell the server it still works on what it holds, so ack_wait
        # only runs out for members that died. Past max_hold the message is let go, so a stuck
        # handler cannot hold it forever.
        interval = max(0.2, self.broker.ack_wait / 3)
        loop = asyncio.get_running_loop()
        while not self._closed:
            await asyncio.sleep(interval)
            nc = self.broker._nc
            if nc is None or not nc.is_connected:
                continue
            now = loop.time()
            for held in list(self._held.values()):
                if now - held.since < self.broker.max_hold:
                    with contextlib.suppress(NatsError, OSError):
                        await held.msg.in_progress()

    async def _settle(self, msg: Msg, delay: float | None) -> None:
        """Ack (``delay`` None) or nak the message; BrokerUnavailable when the server cannot be told."""
        self._held.pop(msg.reply, None)
        if msg.is_acked:
            return
        what = "ack" if delay is None else "nak"
        if self.broker._nc is not None and not self.broker._connected.is_set():
            # Ride out a short reconnect (e.g. a server restart) rather than fail the ack at once.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.broker._connected.wait(), self.broker.publish_timeout)
        nc = self.broker._nc
        if nc is None or not nc.is_connected:
            raise BrokerUnavailable(
                f"cannot {what} on {self.broker._where()}: not connected; the message will be delivered again after ack_wait"
            )
        try:
            if delay is None:
                # A confirmed ack: once it returns, the server will not redeliver to this group.
                await msg.ack_sync(timeout=self.broker.publish_timeout)
            else:
                await msg.nak(delay=delay or None)
        except (NatsError, OSError) as exc:
            if msg.is_acked:
                return
            raise BrokerUnavailable(
                f"{what} of a message on {self.broker._where()} failed ({exc!r}); it will be delivered again after ack_wait"
            ) from exc

    async def close(self) -> None:
        """Leave the group: stop pulling; what this member did not settle goes to the group again after ack_wait."""
        if self._closed:
            return
        self._closed = True
        self.broker._subscriptions.discard(self)
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
        for puller in self._pullers:
            await puller.stop()
        # What this member held is not nak'ed: a nak races the server's cleanup of this member's
        # pull requests and can come back here or out of order. With the progress heartbeats
        # stopped, the server redelivers it, in order, once ack_wait runs out.
        self._held.clear()
        self._queue.put_nowait(_CLOSED)


class _Puller:
    """Keeps one pull request outstanding on one durable consumer and queues what it delivers."""

    def __init__(self, subscription: NatsSubscription, topic: str, durable: str) -> None:
        self.subscription = subscription
        self.broker = subscription.broker
        self.topic = topic
        self.durable = durable
        self.buffered = 0
        self._requested = 0
        self._received = 0
        self._request_over = asyncio.Event()
        self._room = asyncio.Event()
        self._inbox = ""
        self._sub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._last_status: tuple[str, str] | None = None
        self._reported: tuple[str, str] | None = None
        # Short enough that a request lost with a server restart is renewed soon, long enough
        # that an idle subscription costs one small request per few seconds.
        self.expires = 5.0
        #: While taking over unsettled messages (see "Takeover" above): the delivered stream
        #: sequence D and count P found at start, and what arrived meanwhile, by stream sequence.
        self.fence: int | None = None
        self._fence_pending = 0
        self._fenced: dict[int, Msg] = {}
        self._fence_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._set_fence()
        nc = self.broker._client()
        self._inbox = nc.new_inbox()
        self._sub = await nc.subscribe(self._inbox, cb=self._on_message)
        self._task = asyncio.get_running_loop().create_task(self._pull())

    def taken(self) -> None:
        """One of this puller's messages left the buffer."""
        self.buffered -= 1
        self._room.set()

    async def _set_fence(self) -> None:
        """Before the first pull: note the unsettled messages an earlier member left, to be handed on first, in order."""
        js = self.broker._client().jetstream(timeout=self.broker.publish_timeout)
        try:
            info = await js.consumer_info(self.broker.stream, self.durable)
        except (APIError, NatsError, TimeoutError) as exc:
            # Not knowing what is unsettled is not safe to read past: subscribing fails, and is retried.
            raise BrokerUnavailable(f"NATS {self.broker._where()} did not answer about consumer {self.durable!r}: {exc!r}") from exc
        if info.num_ack_pending and info.delivered.stream_seq:
            self.fence = info.delivered.stream_seq
            self._fence_pending = info.num_ack_pending
            log.info(
                "NATS consumer %s: %d messages left unsettled up to stream sequence %d; handing them on first, in order",
                self.durable, self._fence_pending, self.fence,
            )  # fmt: skip
            self._fence_task = asyncio.get_running_loop().create_task(self._watch_fence())

    async def _watch_fence(self) -> None:
        """Lift the fence when the server says nothing older is outstanding elsewhere, or at the latest deadline."""
        loop = asyncio.get_running_loop()
        interval = min(0.25, max(0.05, self.broker.ack_wait / 8))
        deadline = None
        while self.fence is not None and not self.subscription._closed:
            await asyncio.sleep(interval)
            if not self.subscription._reading.is_set():
                continue
            deadline = deadline or loop.time() + 2 * self.broker.ack_wait + 5.0
            if loop.time() > deadline:
                log.warning(
                    "NATS consumer %s: %d of %d unsettled messages did not come back within %.1f s; reading on",
                    self.durable, self._fence_pending - self._older_held(), self._fence_pending, 2 * self.broker.ack_wait + 5.0,
                )  # fmt: skip
                self._lift()
                return
            try:
                js = self.broker._client().jetstream(timeout=self.broker.publish_timeout)
                info = await js.consumer_info(self.broker.stream, self.durable)
            except (APIError, NatsError, TimeoutError, BrokerError):
                continue
            if self.fence is not None and (
                info.ack_floor.stream_seq >= self.fence or info.num_ack_pending <= self._held_here()
            ):
                self._lift()

    def _older_held(self) -> int:
        fence = self.fence or 0
        return sum(1 for seq in self._fenced if seq <= fence)

    def _held_here(self) -> int:
        return sum(1 for msg in self._fenced.values() if msg.reply in self.subscription._held)

    def _fence_in(self, msg: Msg) -> None:
        """Keep a message (alive, un-yielded) while taking over; lift once all P older ones are here."""
        if self.subscription._closed:
            return
        seq = msg.metadata.sequence.stream
        previous = self._fenced.get(seq)
        if previous is not None:
            self.subscription._held.pop(previous.reply, None)  # delivered again: the newer delivery stands
        self._fenced[seq] = msg
        self.subscription._held[msg.reply] = _Held(msg, asyncio.get_running_loop().time())
        if self._older_held() >= self._fence_pending:
            self._lift()

    def _lift(self) -> None:
        """Hand on what was collected, in stream order, and read on normally."""
        self.fence = None
        fenced, self._fenced = self._fenced, {}
        for seq in sorted(fenced):
            msg = fenced[seq]
            if msg.reply in self.subscription._held:
                self.buffered += 1
                self.subscription._queue.put_nowait((self, msg))
        if self._fence_task is not None and self._fence_task is not asyncio.current_task():
            self._fence_task.cancel()

    def wake(self) -> None:
        """Stop waiting for the current request and send a new one."""
        self._request_over.set()

    async def _on_message(self, msg: Msg) -> None:
        headers = msg.headers or {}
        status = headers.get(api.Header.STATUS.value)
        if status and not msg.reply:
            if status == "100":
                return  # idle heartbeat / flow control: not a message
            # 404 no messages, 408 request expired, 409 limits or consumer deleted, 503 no consumer.
            self._last_status = (status, headers.get(api.Header.DESCRIPTION.value, ""))
            self._request_over.set()
            return
        self._received += 1
        if self.fence is not None:
            self._fence_in(msg)
        else:
            self.buffered += 1
            self.subscription._arrived(self, msg)
        if self._received >= self._requested:
            self._request_over.set()

    async def _pull(self) -> None:
        subject = f"{api.DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{self.broker.stream}.{self.durable}"
        batch = max(1, self.broker.batch)
        backoff = 0.0
        await self.subscription._reading.wait()
        while not self.subscription._closed:
            room = batch - self.buffered
            if room < max(1, batch // 2):
                # Ask for more only when half the buffer is free: fewer, fuller requests.
                self._room.clear()
                await self._room.wait()
                continue
            if backoff:
                await asyncio.sleep(backoff)
            nc = self.broker._nc
            if nc is None or nc.is_closed:
                return
            self._requested, self._received, self._last_status = room, 0, None
            self._request_over.clear()
            request = {"batch": room, "expires": int(self.expires * 1e9)}
            try:
                await nc.publish(subject, json.dumps(request).encode(), reply=self._inbox)
            except ConnectionClosedError:
                return
            except (NatsError, OSError):
                backoff = min(2.0, backoff * 2 or 0.1)
                continue
            with contextlib.suppress(TimeoutError):
                # The server ends a request by filling it or with a status; if neither comes
                # (connection or server lost it), ask again shortly after it would have expired.
                await asyncio.wait_for(self._request_over.wait(), self.expires + 1.0)
            after = await self._after(self._last_status)
            if after is None:
                return
            backoff = after

    async def _after(self, status: tuple[str, str] | None) -> float | None:
        """How long to wait before the next request, given how the last one ended; None to stop pulling."""
        if status is None or status[0] in {"404", "408"}:
            return 0.0
        code, description = status
        if (code == "409" and "deleted" in description.lower()) or code == "503":
            # No consumer answers: the server may still be starting, or someone deleted it.
            try:
                js = self.broker._client().jetstream(timeout=self.broker.publish_timeout)
                await js.consumer_info(self.broker.stream, self.durable)
            except NotFoundError:
                self.subscription._fail(
                    BrokerError(
                        f"the JetStream consumer {self.durable!r} (group {self.subscription.group!r}, topic "
                        f"{self.topic!r}) was deleted on the server; subscribe again to recreate it"
                    )
                )
                return None
            except (APIError, NatsError, TimeoutError, BrokerError):
                return 1.0
            return 0.5
        if status != self._reported:
            # Say it once, not every half second: e.g. 409 Exceeded MaxWaiting (too many members).
            self._reported = status
            log.warning(
                "NATS consumer %s on stream %s: pull ended with %s %s", self.durable, self.broker.stream, code, description
            )
        return 0.5

    async def stop(self) -> None:
        if self._fence_task is not None:
            self._fence_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fence_task
        self._fenced.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()


class _Settle:
    """Acks and naks one NATS message for its Delivery."""

    def __init__(self, subscription: NatsSubscription, msg: Msg) -> None:
        self.subscription = subscription
        self.msg = msg

    async def ack(self, delivery: Delivery) -> None:
        await self.subscription._settle(self.msg, None)

    async def nack(self, delivery: Delivery, delay: float) -> None:
        await self.subscription._settle(self.msg, max(0.0, delay))
