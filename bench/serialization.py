"""JSON round trips of an event envelope: msgspec vs orjson + dataclasses vs pydantic v2."""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson
import pydantic
import uuid_utils

from bench.harness import Progress, compare_rates

NAME = "serialization"

# The library whose round-trip rate is `ours`; the others compete for `raw`.
OURS = "msgspec"
# Shown for context but not eligible for `raw`: they skip work the others do.
INFO_ONLY = {"msgspec_structs", "orjson_unvalidated"}


# --- Domain side: stdlib frozen dataclasses, as a dependency-free domain layer would declare them.


@dataclasses.dataclass(frozen=True, slots=True)
class OrderPlaced:
    """Payload of the benchmark event, a plain frozen dataclass."""

    order_id: str
    customer_email: str
    line_skus: list[str]
    item_count: int
    total_amount: float
    express: bool
    placed_at: datetime
    shipping_address: str


@dataclasses.dataclass(frozen=True, slots=True)
class DataclassEnvelope:
    """Envelope as a dataclass, for the orjson contender which cannot use msgspec Structs."""

    event_id: str
    event_type: str
    schema_version: int
    occurred_at: datetime
    aggregate_type: str
    aggregate_id: str
    aggregate_version: int
    correlation_id: str
    causation_id: str
    user_id: str
    tenant: str
    source: str
    payload: OrderPlaced


# --- msgspec: Struct envelope around the dataclass payload (what tidings does).


class Envelope(msgspec.Struct, frozen=True):
    """Envelope as a msgspec Struct carrying a dataclass payload."""

    event_id: str
    event_type: str
    schema_version: int
    occurred_at: datetime
    aggregate_type: str
    aggregate_id: str
    aggregate_version: int
    correlation_id: str
    causation_id: str
    user_id: str
    tenant: str
    source: str
    payload: OrderPlaced


class OrderPlacedStruct(msgspec.Struct, frozen=True):
    """Payload as a Struct, to show what dataclasses cost compared with Structs."""

    order_id: str
    customer_email: str
    line_skus: list[str]
    item_count: int
    total_amount: float
    express: bool
    placed_at: datetime
    shipping_address: str


class StructEnvelope(msgspec.Struct, frozen=True):
    """All-Struct envelope for the informational msgspec_structs row."""

    event_id: str
    event_type: str
    schema_version: int
    occurred_at: datetime
    aggregate_type: str
    aggregate_id: str
    aggregate_version: int
    correlation_id: str
    causation_id: str
    user_id: str
    tenant: str
    source: str
    payload: OrderPlacedStruct


# --- pydantic v2 models with the same shape.


class PydOrderPlaced(pydantic.BaseModel):
    """Payload as a frozen pydantic model."""

    # Strict, like msgspec and the orjson checks: "17" is not an int and 1 is not a bool.
    model_config = pydantic.ConfigDict(frozen=True, strict=True)

    order_id: str
    customer_email: str
    line_skus: list[str]
    item_count: int
    total_amount: float
    express: bool
    placed_at: datetime
    shipping_address: str


class PydEnvelope(pydantic.BaseModel):
    """Envelope as a frozen pydantic model."""

    model_config = pydantic.ConfigDict(frozen=True, strict=True)

    event_id: str
    event_type: str
    schema_version: int
    occurred_at: datetime
    aggregate_type: str
    aggregate_id: str
    aggregate_version: int
    correlation_id: str
    causation_id: str
    user_id: str
    tenant: str
    source: str
    payload: PydOrderPlaced


# --- orjson: dataclasses out, hand-written checks and construction in.

# Field name -> accepted exact types; `type(v) is` rather than isinstance so True is not an int.
_STR = (str,)
_INT = (int,)
_FLOAT = (float, int)
_BOOL = (bool,)


def _checks(cls: type, kinds: dict[str, tuple[type, ...]]) -> tuple[tuple[str, tuple[type, ...]], ...]:
    """Pair every dataclass field with its accepted JSON types, failing fast if one is forgotten."""
    names = [f.name for f in dataclasses.fields(cls)]
    assert sorted(names) == sorted(kinds), f"checks out of date for {cls.__name__}"
    return tuple((name, kinds[name]) for name in names)


# Datetimes and the list are handled separately: they need conversion or per-item checks.
_PAYLOAD_SCALARS = _checks(
    OrderPlaced,
    {
        "order_id": _STR,
        "customer_email": _STR,
        "line_skus": (list,),
        "item_count": _INT,
        "total_amount": _FLOAT,
        "express": _BOOL,
        "placed_at": _STR,
        "shipping_address": _STR,
    },
)
_ENVELOPE_SCALARS = _checks(
    DataclassEnvelope,
    {
        "event_id": _STR,
        "event_type": _STR,
        "schema_version": _INT,
        "occurred_at": _STR,
        "aggregate_type": _STR,
        "aggregate_id": _STR,
        "aggregate_version": _INT,
        "correlation_id": _STR,
        "causation_id": _STR,
        "user_id": _STR,
        "tenant": _STR,
        "source": _STR,
        "payload": (dict,),
    },
)


def _picked(raw: dict[str, Any], checks: tuple[tuple[str, tuple[type, ...]], ...]) -> dict[str, Any]:
    """Copy the known fields, checking each JSON type; unknown keys are ignored like msgspec does."""
    out: dict[str, Any] = {}
    for name, kinds in checks:
        value = raw[name]
        if type(value) not in kinds:
            raise TypeError(f"{name}: expected {kinds}, got {type(value).__name__}")
        out[name] = value
    return out


def orjson_decode(data: bytes) -> DataclassEnvelope:
    """Parse with orjson, check types, convert datetimes and build the dataclasses."""
    raw = orjson.loads(data)
    if type(raw) is not dict:
        raise TypeError("envelope must be an object")
    fields = _picked(raw, _ENVELOPE_SCALARS)
    payload = _picked(fields["payload"], _PAYLOAD_SCALARS)
    if not all(type(sku) is str for sku in payload["line_skus"]):
        raise TypeError("line_skus: expected list of str")
    payload["placed_at"] = datetime.fromisoformat(payload["placed_at"])
    fields["occurred_at"] = datetime.fromisoformat(fields["occurred_at"])
    fields["payload"] = OrderPlaced(**payload)
    return DataclassEnvelope(**fields)


def orjson_decode_unvalidated(data: bytes) -> DataclassEnvelope:
    """Parse with orjson and build the dataclasses trusting the input (no checks; unknown keys break it)."""
    raw = orjson.loads(data)
    payload = raw.pop("payload")
    payload["placed_at"] = datetime.fromisoformat(payload["placed_at"])
    raw["occurred_at"] = datetime.fromisoformat(raw["occurred_at"])
    return DataclassEnvelope(**raw, payload=OrderPlaced(**payload))


# --- Sample data.


def sample_payload() -> OrderPlaced:
    """A payload whose JSON is about 500 bytes."""
    return OrderPlaced(
        order_id=str(uuid_utils.uuid7()),
        customer_email="ada.lovelace@analytical-engines.example",
        line_skus=[f"SKU-{n:06d}-{colour}" for n, colour in enumerate(["RED", "BLUE", "GREEN", "BLACK"] * 3)],
        item_count=17,
        total_amount=1234.56,
        express=True,
        placed_at=datetime(2026, 3, 14, 15, 9, 26, 535897, tzinfo=UTC),
        shipping_address="12 Marylebone High Street, London W1U 4NR, United Kingdom, ring twice",
    )


def sample_envelope(payload: OrderPlaced) -> DataclassEnvelope:
    """An envelope with realistic metadata around `payload`."""
    return DataclassEnvelope(
        event_id=str(uuid_utils.uuid7()),
        event_type="sales.OrderPlaced",
        schema_version=3,
        occurred_at=datetime(2026, 3, 14, 15, 9, 27, 1234, tzinfo=UTC),
        aggregate_type="sales.Order",
        aggregate_id=payload.order_id,
        aggregate_version=7,
        correlation_id=str(uuid_utils.uuid7()),
        causation_id=str(uuid_utils.uuid7()),
        user_id="user-4f1c2a",
        tenant="acme-eu",
        source="sales-api@2.14.0",
        payload=payload,
    )


# --- Contenders: (encode, decode, value) per library.

Codec = tuple[Callable[[Any], bytes], Callable[[bytes], Any], Any]


def contenders(envelope: DataclassEnvelope) -> dict[str, Codec]:
    """Build each library's encoder, decoder and native value from the same data."""
    fields = {f.name: getattr(envelope, f.name) for f in dataclasses.fields(envelope)}
    payload_fields = dataclasses.asdict(envelope.payload)

    # Reused encoder/decoder objects are the documented fast path and what tidings keeps around.
    encoder = msgspec.json.Encoder()
    ours_decoder = msgspec.json.Decoder(type=Envelope)
    structs_decoder = msgspec.json.Decoder(type=StructEnvelope)
    pyd_value = PydEnvelope(**{**fields, "payload": PydOrderPlaced(**payload_fields)})

    return {
        OURS: (encoder.encode, ours_decoder.decode, Envelope(**fields)),
        "msgspec_structs": (
            encoder.encode,
            structs_decoder.decode,
            StructEnvelope(**{**fields, "payload": OrderPlacedStruct(**payload_fields)}),
        ),
        "orjson": (orjson.dumps, orjson_decode, envelope),
        "orjson_unvalidated": (orjson.dumps, orjson_decode_unvalidated, envelope),
        "pydantic": (PydEnvelope.model_dump_json, PydEnvelope.model_validate_json, pyd_value),
    }


def _check_round_trip(label: str, codec: Codec) -> bytes:
    """Fail loudly if a contender does not give back an equal, typed object."""
    encode, decode, value = codec
    data = encode(value)
    # pydantic returns str from model_dump_json; the others return bytes.
    data_bytes = data.encode() if isinstance(data, str) else data
    back = decode(data)
    if back != value or type(back) is not type(value):
        raise AssertionError(f"{label}: round trip changed the value")
    return data_bytes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the serialisation benchmark."""
    parser.add_argument(
        "--seconds",
        type=float,
        default=1.5,
        help="time per library, split evenly between encode, decode and round trip (default 1.5)",
    )


async def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Measure encode, decode and round-trip rates of each library."""
    payload = sample_payload()
    envelope = sample_envelope(payload)
    codecs = contenders(envelope)
    sizes = {label: len(_check_round_trip(label, codec)) for label, codec in codecs.items()}
    encoded = {label: encode(value) for label, (encode, _, value) in codecs.items()}
    per_step = args.seconds / 3

    # Default arguments bind each library's functions now, not when the lambda runs.
    encodes = {label: (lambda e=encode, v=value: e(v)) for label, (encode, _, value) in codecs.items()}
    decodes = {label: (lambda d=decode, b=encoded[label]: d(b)) for label, (_, decode, _) in codecs.items()}
    trips = {label: (lambda e=encode, d=decode, v=value: d(e(v))) for label, (encode, decode, value) in codecs.items()}
    measured = {
        "encode_per_s": compare_rates(encodes, seconds=per_step, progress=progress, description="encode"),
        "decode_per_s": compare_rates(decodes, seconds=per_step, progress=progress, description="decode"),
        "round_trip_per_s": compare_rates(trips, seconds=per_step, progress=progress, description="round trip"),
    }

    libraries: dict[str, dict[str, Any]] = {
        label: {**{metric: round(rates[label], 1) for metric, rates in measured.items()}, "encoded_bytes": sizes[label]}
        for label in codecs
    }
    rivals = {label: libs for label, libs in libraries.items() if label != OURS and label not in INFO_ONLY}
    raw_label = max(rivals, key=lambda label: rivals[label]["round_trip_per_s"])
    ours = libraries[OURS]["round_trip_per_s"]
    raw = libraries[raw_label]["round_trip_per_s"]
    return {
        "name": NAME,
        "units": "round trips/s",
        "ours": ours,
        "raw": raw,
        "ratio": round(ours / raw, 3),
        "raw_library": raw_label,
        "payload_bytes": len(msgspec.json.encode(payload)),
        "seconds_per_library": args.seconds,
        "versions": {
            "python": platform.python_version(),
            "msgspec": msgspec.__version__,
            "orjson": orjson.__version__,
            "pydantic": pydantic.VERSION,
        },
        "cpus": os.cpu_count(),
        "libraries": libraries,
    }
