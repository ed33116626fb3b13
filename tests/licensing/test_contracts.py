"""Specification of the platform's integration-event contracts: names, topics, the codec, and v1 → v2 upcasting."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import types
import typing
from datetime import UTC, datetime

import msgspec
import pytest

from examples.licensing.asset_processing.domain import AssetUploaded, UploadAsset
from examples.licensing.compliance.domain import CloseInvestigation, InfringementDetected
from examples.licensing.contracts import (
    CONTRACTS,
    LICENSE_PURCHASE_CONFIRMED_TOPIC,
    UPCASTERS,
    V1_CURRENCY,
    AssetProcessingStalled,
    AssetReadyForSearch,
    LicensePurchaseConfirmed,
    LicensePurchaseConfirmedV1,
    LicenseUsageReported,
    UsageViolationDetected,
    contract_registry,
    license_purchase_confirmed_v1_to_v2,
    register_contracts,
)
from examples.licensing.licensing.domain import LicensePurchased, OfferLicense
from tidings.domain import Message
from tidings.messaging import (
    IncompatibleVersion,
    IntegrationEvent,
    MalformedMessage,
    MessageError,
    MessageRegistry,
    UnknownMessageType,
)

CONTEXTS = ("asset_processing", "licensing", "compliance")

SAMPLES: list[IntegrationEvent] = [
    AssetReadyForSearch(
        asset_id="asset-7",
        owner_id="ada",
        title="Harbour at dawn",
        media_type="image/jpeg",
        size_bytes=2_400_000,
        width=6000,
        height=4000,
        format="jpeg",
        camera_make="Fujifilm",
        camera_model="X-T5",
        captured_at=datetime(2024, 5, 1, 6, 12, tzinfo=UTC),
        keywords=("harbour", "dawn"),
    ),
    AssetProcessingStalled(asset_id="asset-7", owner_id="ada", stage="awaiting_metadata", waited_seconds=900),
    LicensePurchaseConfirmed(license_id="lic-7", asset_id="asset-7", buyer_id="bob", price_cents=4_900, currency="USD"),
    LicenseUsageReported(license_id="lic-7", asset_id="asset-7", buyer_id="bob", uses=2, used=4, allowed=3),
    UsageViolationDetected(license_id="lic-7", asset_id="asset-7", buyer_id="bob", used=4, allowed=3),
]

NAME = LicensePurchaseConfirmed.message_name
V1_PAYLOAD = b'{"license_id": "lic-7", "asset_id": "asset-7", "buyer_id": "bob", "price_cents": 4900}'


def platform_messages() -> list[type[Message]]:
    """Every message class defined in the contracts and in each context's domain (imported module by module)."""
    # Only the pure packages: importing application or infrastructure modules here would start
    # whatever they wire up at import time, and this test is about names, not wiring.
    packages = ["examples.licensing.contracts", *(f"examples.licensing.{context}.domain" for context in CONTEXTS)]
    found: dict[type[Message], None] = {}
    for package_name in packages:
        package = importlib.import_module(package_name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
            module = importlib.import_module(info.name)
            for _, value in inspect.getmembers(module, inspect.isclass):
                if issubclass(value, Message) and value.__module__ == module.__name__:
                    found[value] = None
    return list(found)


# -- the catalog -----------------------------------------------------------------------------------


def test_every_contract_has_a_sample_here() -> None:
    # Given the catalog / then every contract is exercised by the round trip below, once
    assert [type(sample) for sample in SAMPLES] == list(CONTRACTS)


def test_contracts_are_named_by_the_context_that_publishes_them_and_versioned() -> None:
    # Given the catalog / then each name is "<context>.<Name>", and the versions are as published
    versions = {contract.message_name: contract.message_version for contract in CONTRACTS}
    assert versions == {
        "asset_processing.AssetReadyForSearch": 1,
        "asset_processing.AssetProcessingStalled": 1,
        "licensing.LicensePurchaseConfirmed": 2,
        "licensing.LicenseUsageReported": 1,
        "licensing.UsageViolationDetected": 1,
    }
    assert all(issubclass(contract, IntegrationEvent) for contract in CONTRACTS)


def test_each_contract_has_its_own_topic_and_every_version_shares_it() -> None:
    # Given the catalog / then topics are distinct, broker-safe, and v1 travels where v2 does
    topics = [contract.contract_topic for contract in CONTRACTS]
    assert len(set(topics)) == len(topics)
    assert all(set(topic) <= set("abcdefghijklmnopqrstuvwxyz0123456789._-") for topic in topics)
    assert LicensePurchaseConfirmedV1.contract_topic == LicensePurchaseConfirmed.contract_topic == LICENSE_PURCHASE_CONFIRMED_TOPIC


_SCALARS = (str, int, float, bool, datetime, type(None))


def _is_flat(hint: object) -> bool:
    if hint in _SCALARS:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return all(_is_flat(arg) for arg in args)
    # A tuple of scalars (keywords) is still flat: every language has an array of strings.
    return origin is tuple and len(args) == 2 and args[1] is Ellipsis and args[0] in _SCALARS


@pytest.mark.parametrize("contract", [*CONTRACTS, LicensePurchaseConfirmedV1], ids=lambda c: c.__name__)
def test_contract_fields_are_flat_and_serialisable(contract: type[IntegrationEvent]) -> None:
    # Given a contract / then every field is a scalar, an optional scalar or a tuple of scalars
    hints = typing.get_type_hints(contract)
    fields = {field.name: hints[field.name] for field in dataclasses.fields(contract)}  # type: ignore[arg-type]
    assert fields, f"{contract.__name__} has no fields"
    nested = {name: hint for name, hint in fields.items() if not _is_flat(hint)}
    assert not nested, f"{contract.__name__} has nested fields {nested}; contracts are flat"
    # And it exports a JSON Schema (what `tidings contracts export` will publish)
    schema = msgspec.json.schema(contract)
    assert set(schema["$defs"][contract.__name__]["properties"]) == set(fields)


def test_the_flatness_check_can_fail() -> None:
    # Given hints a contract must not have / then the check refuses them
    assert not _is_flat(dict[str, int])
    assert not _is_flat(list[AssetReadyForSearch])
    assert not _is_flat(AssetReadyForSearch | None)
    assert _is_flat(str | None) and _is_flat(tuple[str, ...])


def test_every_message_of_the_platform_has_a_unique_name_qualified_by_its_context() -> None:
    # Given every message class under examples.licensing (domain events, commands, contracts)
    messages = platform_messages()
    # (the scan really reaches every package: a sample from each kind and context is in it)
    samples = {AssetUploaded, UploadAsset, LicensePurchased, OfferLicense, InfringementDetected, CloseInvestigation}
    assert samples <= set(messages)
    assert set(CONTRACTS) | {LicensePurchaseConfirmedV1} <= set(messages)

    # Then each name starts with the context it belongs to (contracts: the one that publishes them)
    for message in messages:
        module_context = message.__module__.split(".")[2]
        context = message.__module__.split(".")[3] if module_context == "contracts" else module_context
        assert context in CONTEXTS, f"{message.__module__} is outside the three contexts and contracts/"
        assert message.message_name.startswith(f"{context}."), (
            f"{message.__qualname__} is named {message.message_name!r}; give it name='{context}.{message.__name__}'"
        )

    # And no two classes share a name, except the historical v1 of a contract (never registered)
    current = [m for m in messages if m is not LicensePurchaseConfirmedV1]
    registry = MessageRegistry(current)
    assert len(registry.names) == len(current)


# -- round trip ------------------------------------------------------------------------------------


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_contract_round_trips_through_the_registry(event: IntegrationEvent) -> None:
    # Given a registry that knows the contracts
    registry = contract_registry()

    # When a contract is encoded and decoded under its name and version
    back = registry.decode(event.message_name, event.message_version, registry.encode(event))

    # Then the same typed event comes back (datetimes and tuples included)
    assert back == event
    assert type(back) is type(event)


def test_registry_reads_every_contract_by_name() -> None:
    # Given a registry built by register_contracts on an existing registry / then it knows every contract
    registry = register_contracts(MessageRegistry())
    assert registry.names == sorted(contract.message_name for contract in CONTRACTS)


# -- v1 → v2 ---------------------------------------------------------------------------------------


def test_v1_license_purchase_confirmed_is_read_as_v2_in_euros() -> None:
    # Given a v1 payload as the old producer published it
    registry = contract_registry()
    v1 = LicensePurchaseConfirmedV1(license_id="lic-7", asset_id="asset-7", buyer_id="bob", price_cents=4_900)
    payload = registry.encode(v1)
    assert b"currency" not in payload

    # When a current consumer reads it as version 1
    event = registry.decode(NAME, 1, payload)

    # Then it is the v2 class, with the currency every v1 sale was in
    assert event == LicensePurchaseConfirmed(
        license_id="lic-7", asset_id="asset-7", buyer_id="bob", price_cents=4_900, currency="EUR"
    )
    assert type(event) is LicensePurchaseConfirmed


def test_upcaster_adds_the_currency_and_replaces_a_stray_one() -> None:
    # Given v1 data, one with a stray currency key v1 readers never saw
    plain = {"license_id": "l", "asset_id": "a", "buyer_id": "b", "price_cents": 1}

    # When upcast / then v2 data comes back in euros, and the caller's dict is untouched
    assert license_purchase_confirmed_v1_to_v2(plain) == {**plain, "currency": V1_CURRENCY}
    assert "currency" not in plain
    assert license_purchase_confirmed_v1_to_v2({**plain, "currency": "USD"})["currency"] == "EUR"
    assert UPCASTERS == {(NAME, 1): license_purchase_confirmed_v1_to_v2}


def test_without_the_upcaster_a_v1_payload_is_refused_naming_the_missing_step() -> None:
    # Given a registry that knows v2 but was not given the upcaster
    registry = MessageRegistry([LicensePurchaseConfirmed])

    # When a v1 payload is read / then it is refused, which is what register_contracts prevents
    with pytest.raises(IncompatibleVersion, match="no upcaster from v1 to v2"):
        registry.decode(NAME, 1, V1_PAYLOAD)


def test_v2_payload_is_read_without_upcasting() -> None:
    # Given a v2 payload in dollars / when read as v2 / then the currency is kept (the upcaster would say EUR)
    payload = b'{"license_id": "l", "asset_id": "a", "buyer_id": "b", "price_cents": 5, "currency": "USD"}'
    assert contract_registry().decode(NAME, 2, payload).currency == "USD"  # type: ignore[attr-defined]


def test_v1_and_v2_classes_cannot_share_one_registry() -> None:
    # Given a registry with v2 / when the historical v1 class is registered / then it is refused by name
    registry = contract_registry()
    with pytest.raises(ValueError, match="two classes claim the message name 'licensing.LicensePurchaseConfirmed'"):
        registry.register(LicensePurchaseConfirmedV1)


# -- bad input -------------------------------------------------------------------------------------


def test_a_v3_payload_is_refused_as_newer_than_this_code() -> None:
    # Given code that knows v2 / when a v3 payload arrives / then it is refused with both versions
    with pytest.raises(IncompatibleVersion) as refused:
        contract_registry().decode(NAME, 3, V1_PAYLOAD)
    assert (refused.value.version, refused.value.current) == (3, 2)
    assert str(refused.value).startswith("licensing.LicensePurchaseConfirmed v3 cannot be read as v2")
    assert "newer than this code" in str(refused.value)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        pytest.param(b"\x00\xffgarbage", "not valid JSON", id="garbage"),
        pytest.param(b'{"license_id": "l"', "not valid JSON", id="truncated"),
    ],
)
def test_garbage_is_refused_as_malformed_at_any_version(payload: bytes, reason: str, version: int) -> None:
    # Given bytes that are not JSON / when read as v1 or v2 / then a MalformedMessage says so
    with pytest.raises(MalformedMessage, match=reason) as refused:
        contract_registry().decode(NAME, version, payload)
    assert refused.value.name == NAME
    assert isinstance(refused.value, MessageError)


def test_a_v1_payload_that_is_not_an_object_is_refused_before_upcasting() -> None:
    # Given a v1 payload that is a JSON array / when read / then it is refused as malformed
    with pytest.raises(MalformedMessage, match="payload must be a JSON object, got list"):
        contract_registry().decode(NAME, 1, b'["lic-7", "bob"]')


def test_a_v1_payload_missing_a_field_is_refused_naming_it() -> None:
    # Given a v1 payload without its price / when read / then the missing field is named after upcasting
    with pytest.raises(MalformedMessage) as refused:
        contract_registry().decode(NAME, 1, b'{"license_id": "l", "asset_id": "a", "buyer_id": "b"}')
    assert refused.value.field == "price_cents"


def test_a_wrongly_typed_field_is_refused_naming_it() -> None:
    # Given a violation whose count is a string (as the legacy feed would send it) / then the field is named
    payload = b'{"license_id": "l", "asset_id": "a", "buyer_id": "b", "used": "4", "allowed": 3}'
    with pytest.raises(MalformedMessage) as refused:
        contract_registry().decode(UsageViolationDetected.message_name, 1, payload)
    assert refused.value.field == "used"


def test_an_unknown_contract_name_is_refused_listing_the_known_ones() -> None:
    # Given the contract registry / when an unknown event type arrives / then it is refused with the list
    with pytest.raises(UnknownMessageType) as refused:
        contract_registry().decode("billing.InvoicePaid", 1, b"{}")
    assert "licensing.LicensePurchaseConfirmed" in str(refused.value)


def test_unknown_extra_fields_are_ignored_and_defaults_fill_missing_optional_ones() -> None:
    # Given an AssetReadyForSearch v1 from a newer producer: one extra field, optional ones left out
    payload = (
        b'{"asset_id": "a", "owner_id": "o", "title": "t", "media_type": "image/png", "size_bytes": 1,'
        b' "width": 2, "height": 3, "format": "png", "dominant_colour": "blue"}'
    )

    # When read / then the known fields are kept and the optional ones take their defaults
    event = contract_registry().decode(AssetReadyForSearch.message_name, 1, payload)
    assert event == AssetReadyForSearch(
        asset_id="a", owner_id="o", title="t", media_type="image/png", size_bytes=1, width=2, height=3, format="png"
    )
