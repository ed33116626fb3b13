"""The one small interface every broker implements: publish a batch, subscribe with ack/nack, close.

A broker is done when the broker conformance suite (tests/brokers/) passes against a real server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from tidings.domain.errors import TidingsError

__all__ = [
    "Broker",
    "BrokerConfigurationError",
    "BrokerError",
    "BrokerUnavailable",
    "Delivery",
    "MessageRejected",
    "OutgoingMessage",
    "Subscription",
]


class BrokerError(TidingsError):
    """Something went wrong talking to a broker."""


class BrokerUnavailable(BrokerError):
    """Transient: the broker cannot be reached or did not confirm in time; retry later, in order."""


class BrokerConfigurationError(BrokerError, ValueError):
    """Permanent: the broker URL or an option is wrong (unknown scheme or option, malformed URL); fix the configuration.

    A worker stops on it with its message instead of waiting for the broker: no retry can fix it.
    """


class MessageRejected(BrokerError):
    """Permanent: the broker refused this message (too large, invalid subject…); retrying will not help."""


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One integration event on its way to a broker: where it goes, its metadata and its payload."""

    topic: str
    key: str
    partition: int
    event_id: str
    headers: Mapping[str, str]
    payload: bytes
    #: 0 for the first publication; n for the n-th replay an operator asked for (``tidings outbox replay``).
    replay: int = 0

    @property
    def publication_id(self) -> str:
        """The id a de-duplicating broker keys this publication by: a retry repeats it, a replay does not.

        The event id for a first publication, ``{event_id}~replay-{n}`` for the n-th replay. Only
        the broker sees it: the message's event id (headers, Delivery.event_id) stays the same,
        so consumers that applied the event skip its replay through their inbox.
        """
        return self.event_id if not self.replay else f"{self.event_id}~replay-{self.replay}"


@dataclass(slots=True)
class Delivery:
    """One message received from a broker; the consumer must ``ack`` it after its effects committed.

    ``attempt`` counts deliveries of this message to this group (1 on first delivery) where the
    broker knows it; brokers that do not, report 1 and rely on the consumer's inbox.
    """

    topic: str
    key: str
    partition: int
    event_id: str
    headers: dict[str, str]
    payload: bytes
    attempt: int = 1
    _settle: "Settler | None" = field(default=None, repr=False)

    async def ack(self) -> None:
        """Done: the broker will not deliver this message to this group again."""
        if self._settle is not None:
            await self._settle.ack(self)

    async def nack(self, delay: float = 0.0) -> None:
        """Not done: deliver it again after ``delay`` seconds (order per key is the consumer's to keep)."""
        if self._settle is not None:
            await self._settle.nack(self, delay)


class Settler(Protocol):
    """What a broker's subscription does when a delivery is acked or nacked."""

    async def ack(self, delivery: Delivery) -> None: ...

    async def nack(self, delivery: Delivery, delay: float) -> None: ...


@runtime_checkable
class Subscription(Protocol):
    """An open subscription of one consumer group; iterate it for deliveries, close it to leave."""

    def __aiter__(self) -> AsyncIterator[Delivery]: ...

    async def close(self) -> None: ...


@runtime_checkable
class Broker(Protocol):
    """A message broker chosen by URL (``local:``, ``nats://``, ``amqp://``, ``redis://``, ``kafka://``)."""

    url: str
    #: The largest payload the broker accepts; the relay parks larger rows instead of retrying them.
    max_message_bytes: int

    async def connect(self) -> None:
        """Open connections and declare what the broker needs (streams, exchanges); BrokerUnavailable if down."""
        ...

    async def publish(self, messages: Sequence[OutgoingMessage]) -> list[BaseException | None]:
        """Publish every message without waiting for one confirmation before sending the next.

        Returns one entry per message, in order: None when the broker confirmed it, otherwise the
        error (BrokerUnavailable to retry, MessageRejected to park). Never raises for one message.
        """
        ...

    async def subscribe(self, topics: Sequence[str], group: str) -> Subscription:
        """Join consumer ``group`` on ``topics``: each message reaches one member of the group, in order per key."""
        ...

    async def close(self) -> None:
        """Close connections; pending confirmations are awaited or failed, never silently dropped."""
        ...
