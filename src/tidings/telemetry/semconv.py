"""The attribute names tidings puts on spans and metrics: OpenTelemetry messaging conventions, and our own.

One module, so a rename of a convention is one edit. Values never include a payload or a
user id: only identifiers of messages, flows, aggregates and consumers.
"""

from __future__ import annotations

__all__ = [
    "MESSAGING_SYSTEM",
    "MESSAGING_DESTINATION_NAME",
    "MESSAGING_DESTINATION_PARTITION_ID",
    "MESSAGING_OPERATION_TYPE",
    "MESSAGING_OPERATION_NAME",
    "MESSAGING_MESSAGE_ID",
    "MESSAGING_MESSAGE_CONVERSATION_ID",
    "MESSAGING_BATCH_MESSAGE_COUNT",
    "MESSAGING_CONSUMER_GROUP_NAME",
    "TIDINGS_MESSAGE_TYPE",
    "TIDINGS_AGGREGATE_TYPE",
    "TIDINGS_AGGREGATE_ID",
    "TIDINGS_COMMAND_TYPE",
    "TIDINGS_CONTEXT",
    "TIDINGS_PROJECTION",
    "TIDINGS_SAGA",
    "TIDINGS_PARTITION",
    "TRACEPARENT_HEADER",
    "messaging_system_of",
]

# OpenTelemetry semantic conventions for messaging (semconv 1.3x, "messaging.*").
MESSAGING_SYSTEM = "messaging.system"
MESSAGING_DESTINATION_NAME = "messaging.destination.name"
MESSAGING_DESTINATION_PARTITION_ID = "messaging.destination.partition.id"
MESSAGING_OPERATION_TYPE = "messaging.operation.type"  # create | send | receive | process | settle
MESSAGING_OPERATION_NAME = "messaging.operation.name"
MESSAGING_MESSAGE_ID = "messaging.message.id"  # the event id
MESSAGING_MESSAGE_CONVERSATION_ID = "messaging.message.conversation_id"  # the correlation id
MESSAGING_BATCH_MESSAGE_COUNT = "messaging.batch.message_count"
MESSAGING_CONSUMER_GROUP_NAME = "messaging.consumer.group.name"  # the consumer's name

# Ours, where the conventions have no name for a DDD notion.
TIDINGS_MESSAGE_TYPE = "tidings.message.type"
TIDINGS_AGGREGATE_TYPE = "tidings.aggregate.type"
TIDINGS_AGGREGATE_ID = "tidings.aggregate.id"
TIDINGS_COMMAND_TYPE = "tidings.command.type"
TIDINGS_CONTEXT = "tidings.context"  # the bounded context (Application.name)
TIDINGS_PROJECTION = "tidings.projection"
TIDINGS_SAGA = "tidings.saga"
TIDINGS_PARTITION = "tidings.outbox.partition"

#: The W3C Trace Context header; the broker headers carry it under this standard name.
TRACEPARENT_HEADER = "traceparent"

# Well-known messaging.system values; a broker not listed reports its class name.
_SYSTEMS = {
    "KafkaBroker": "kafka",
    "RabbitMQBroker": "rabbitmq",
    "NatsBroker": "nats",
    "RedisBroker": "redis",
    "LocalBroker": "tidings.local",
}


def messaging_system_of(broker: object) -> str:
    """The ``messaging.system`` value for a broker object."""
    name = type(broker).__name__
    return _SYSTEMS.get(name, name.lower())
