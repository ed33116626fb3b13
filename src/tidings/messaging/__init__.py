"""Messaging: the envelope, identifiers, integration-event contracts, the registry and its codec."""

from tidings.messaging.contracts import IntegrationEvent
from tidings.messaging.envelope import Envelope, MessageContext, utc_now
from tidings.messaging.errors import (
    IncompatibleVersion,
    MalformedMessage,
    MessageError,
    MessageTooLarge,
    UnknownMessageType,
)
from tidings.messaging.ids import new_id
from tidings.messaging.partitioning import DEFAULT_PARTITIONS, partition_of
from tidings.messaging.redaction import redact_url
from tidings.messaging.registry import MessageRegistry, Upcaster, registry_of
from tidings.messaging.state import StateCodec

__all__ = [
    "DEFAULT_PARTITIONS",
    "Envelope",
    "IncompatibleVersion",
    "IntegrationEvent",
    "MalformedMessage",
    "MessageContext",
    "MessageError",
    "MessageRegistry",
    "MessageTooLarge",
    "StateCodec",
    "UnknownMessageType",
    "Upcaster",
    "new_id",
    "partition_of",
    "redact_url",
    "registry_of",
    "utc_now",
]
