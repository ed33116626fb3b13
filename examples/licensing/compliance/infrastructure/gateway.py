"""The partner-feed gateway: puts partners' raw usage records on ``compliance.partner_feed``, unjudged.

The gateway accepts whatever a partner sent — judging it is the ACL's job, in the consumer, where
a record that cannot be understood is dead-lettered with its reason instead of being lost. It only
wraps each record in a minimal envelope (the headers every tidings consumer reads) and chooses its
identity:

- a record with a usable ``report_id`` gets the event id derived from (partner, report_id), so every
  copy of that report is one message to the inbox, however often it is sent;
- any other record gets an id derived from its exact bytes, so re-sending a batch after a failed
  call (the safe thing to do) adds nothing new, while two different garbage lines stay two dead letters.

The payload is the record's bytes as received (a dict is encoded to JSON first). The partition
key is the record's license when it names one, so one license's reports are applied in order and
never race on its investigation.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from examples.licensing.compliance.application import (
    PARTNER_FEED_NAMESPACE,
    PARTNER_FEED_TOPIC,
    PARTNER_REPORT_TYPE,
    check_partner_name,
    partner_event_id,
    partner_source,
    report_id_of,
)
from tidings.brokers import Broker, BrokerUnavailable, OutgoingMessage
from tidings.brokers.headers import envelope_to_headers
from tidings.domain import ValidationError
from tidings.messaging import DEFAULT_PARTITIONS, Envelope, new_id, partition_of, utc_now

__all__ = ["MAX_BATCH_RECORDS", "MAX_RECORD_BYTES", "PartnerBatchReceipt", "submit_partner_batch"]

#: The most records one batch may carry; split bigger deliveries.
MAX_BATCH_RECORDS = 10_000
#: The largest record accepted; a usage report is a few hundred bytes.
MAX_RECORD_BYTES = 64 * 1024

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class PartnerBatchReceipt:
    """What the gateway put on the feed: how many records, under which event ids, in which flow."""

    partner: str
    #: Records accepted onto the feed (duplicates included: they are applied once downstream).
    accepted: int
    #: The event id of each record, in the batch's order; equal ids are copies of one report.
    event_ids: tuple[str, ...]
    correlation_id: str

    @property
    def distinct(self) -> int:
        """How many different messages the batch carried (copies of one report count once)."""
        return len(set(self.event_ids))


async def submit_partner_batch(
    broker: Broker,
    records: Sequence[bytes | dict[str, object]],
    *,
    partner: str,
    correlation_id: str | None = None,
    user_id: str | None = None,
    tenant: str | None = None,
    partitions: int = DEFAULT_PARTITIONS,
) -> PartnerBatchReceipt:
    """Publish each raw record of ``partner`` on the partner feed and return the receipt.

    The whole batch is checked before anything is published (ValidationError naming the field or
    record); every record carries ``tenant`` (the caller's), so the ACL applies it to that tenant's
    licenses only. BrokerUnavailable if the broker did not take every record — sending the same batch
    again is safe, as every record keeps its event id.
    """
    try:
        check_partner_name(partner)
    except ValueError as exc:
        raise ValidationError(str(exc), field="partner") from None
    if len(records) > MAX_BATCH_RECORDS:
        raise ValidationError(
            f"a batch carries at most {MAX_BATCH_RECORDS} records, got {len(records)}; split it", field="records"
        )
    payloads = [_payload(index, record) for index, record in enumerate(records)]
    correlation_id = correlation_id or new_id()
    now = utc_now()
    messages = []
    for payload in payloads:
        data = _decoded(payload)
        report_id = report_id_of(data)
        event_id = (
            partner_event_id(partner, report_id)
            if report_id is not None
            else str(uuid.uuid5(PARTNER_FEED_NAMESPACE, f"{len(partner)}:{partner}:sha256:{hashlib.sha256(payload).hexdigest()}"))
        )
        license_id = data.get("license") if isinstance(data, dict) else None
        key = f"{partner}:{license_id}" if isinstance(license_id, str) and license_id.strip() else event_id
        envelope = Envelope(
            event_id=event_id,
            event_type=PARTNER_REPORT_TYPE,
            schema_version=1,
            occurred_at=now,
            correlation_id=correlation_id,
            user_id=user_id,
            tenant=tenant,
            source=partner_source(partner),
        )
        messages.append(
            OutgoingMessage(
                topic=PARTNER_FEED_TOPIC,
                key=key,
                partition=partition_of(key, partitions),
                event_id=event_id,
                headers=envelope_to_headers(_encoder.encode(envelope)),
                payload=payload,
            )
        )
    if messages:
        results = await broker.publish(messages)
        failed = [(message, error) for message, error in zip(messages, results, strict=True) if error is not None]
        if failed:
            first = failed[0][1]
            raise BrokerUnavailable(
                f"the broker took {len(messages) - len(failed)} of {len(messages)} records of partner {partner!r} "
                f"(first error: {type(first).__name__}: {first}); send the same batch again — records keep their "
                "event ids, so what was taken is not applied twice"
            )
    return PartnerBatchReceipt(partner, len(messages), tuple(m.event_id for m in messages), correlation_id)


def _payload(index: int, record: bytes | dict[str, object]) -> bytes:
    if isinstance(record, dict):
        try:
            payload = _encoder.encode(record)
        except (TypeError, msgspec.EncodeError) as exc:
            raise ValidationError(f"cannot be encoded as JSON: {exc}", field=f"records[{index}]") from None
    elif isinstance(record, bytes | bytearray | memoryview):
        payload = bytes(record)
    else:
        raise ValidationError(
            f"must be the raw bytes of a record or a dict, got {type(record).__name__}", field=f"records[{index}]"
        )
    if len(payload) > MAX_RECORD_BYTES:
        raise ValidationError(
            f"is {len(payload)} bytes, over the limit of {MAX_RECORD_BYTES} bytes for one record", field=f"records[{index}]"
        )
    return payload


def _decoded(payload: bytes) -> object:
    # Only to find the report's id and license for its identity and key; judging the record is the
    # consumer's job, so garbage here is simply a record without either.
    try:
        return msgspec.json.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
