"""Outbox rows for messages sent from outside a command handler (a saga, a scheduler): envelope, topic, partition.

A command handler's unit of work builds its own outbox rows. Code that reacts to a message and
sends new ones in the same transaction (a process manager) needs the same thing without a unit of
work: this module makes one envelope and one ``OutboxEntry`` per message, with correlation and
causation taken from the message being handled, so traces stay connected across contexts.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from tidings.app.application import DEFAULT_MAX_MESSAGE_BYTES
from tidings.domain.messages import Message
from tidings.messaging.contracts import warn_if_deprecated
from tidings.messaging.envelope import Envelope, MessageContext, utc_now
from tidings.messaging.errors import MessageTooLarge
from tidings.messaging.ids import new_id
from tidings.messaging.personal import KeyRing, PersonalDataError, personal_fields
from tidings.messaging.partitioning import DEFAULT_PARTITIONS, partition_of
from tidings.messaging.registry import MessageRegistry
from tidings.store.records import OutboxEntry
from tidings.telemetry import tracing

__all__ = ["COMMAND_TOPIC_SUFFIX", "command_topic", "outbox_entry"]

#: A context's commands travel on ``<context>.commands``; the consumer of that topic executes them.
COMMAND_TOPIC_SUFFIX = ".commands"

_envelope_encoder = msgspec.json.Encoder()
# Validation only caches one decoder per message class; any registry instance will do.
_validator = MessageRegistry()


def command_topic(context: str) -> str:
    """The topic on which bounded context ``context`` receives commands (``licensing.commands``)."""
    if not context:
        raise ValueError("a command topic needs the name of the bounded context that executes the command")
    return f"{context}{COMMAND_TOPIC_SUFFIX}"


def outbox_entry(
    message: Message,
    *,
    topic: str,
    key: str,
    source: str,
    cause: Envelope | None = None,
    context: MessageContext | None = None,
    partitions: int = DEFAULT_PARTITIONS,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    now: datetime | None = None,
    event_id: str | None = None,
    keys: KeyRing | None = None,
) -> tuple[Envelope, OutboxEntry]:
    """The envelope and outbox row that publish ``message`` on ``topic`` in partition-key order of ``key``.

    Correlation, user and tenant come from ``cause`` (the envelope being handled) or else from
    ``context``; the causation id is the cause's event id. Field types are validated and the
    payload's size is checked here, before anything is written. A message with personal fields
    is sealed with ``keys``, whose ``prepare_subjects`` was awaited for its subjects.
    """
    if getattr(type(message), "contract_deprecated_after", None) is not None:
        warn_if_deprecated(type(message))
    message = _validator.validate(message)  # converted to its field types; a command's own validate() rules ran
    if personal_fields(type(message)):
        if keys is None:
            # Sealing needs the subjects' keys from the store (async); refusing beats writing plaintext.
            raise PersonalDataError(
                f"{message.message_name} has personal fields: pass keys=SubjectKeys(store) after awaiting "
                "keys.prepare_subjects(subjects_of(message, ...)), or send it from a command handler, whose unit of work seals them"
            )
        payload = keys.seal(message, message.message_name)
    else:
        payload = MessageRegistry.encode(message)
    if len(payload) > max_message_bytes:
        raise MessageTooLarge(message.message_name, len(payload), max_message_bytes)
    context = context or MessageContext()
    event_id = event_id or new_id()
    envelope = Envelope(
        event_id=event_id,
        event_type=message.message_name,
        schema_version=message.message_version,
        occurred_at=now or utc_now(),
        correlation_id=(cause.correlation_id if cause else None) or context.correlation_id or event_id,
        causation_id=cause.event_id if cause else context.causation_id,
        user_id=cause.user_id if cause else context.user_id,
        tenant=cause.tenant if cause else context.tenant,
        source=source,
    )
    if tracing.tracing_enabled():
        # The create span is a child of what is handling the cause (a saga's process span). It
        # ends here, not at the commit: this row commits with the caller's transaction, unseen.
        span = tracing.start_create_span(
            topic, event_id, envelope.event_type, envelope.correlation_id, None, None, source
        )
        envelope = msgspec.structs.replace(envelope, traceparent=tracing.traceparent_of(span))
        tracing.end_spans([span])
    entry = OutboxEntry(
        event_id=event_id,
        partition=partition_of(key, partitions),
        partition_key=key,
        topic=topic,
        event_type=envelope.event_type,
        envelope=_envelope_encoder.encode(envelope),
        payload=payload,
    )
    return envelope, entry
