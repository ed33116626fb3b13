"""Specification of the messaging layer: registry, upcasting, tolerant reading, errors, envelope, ids, state codec."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.domain import Command, DomainEvent, EventSourcedAggregate, StateStoredAggregate, ValidationError
from tidings.messaging import (
    Envelope,
    IncompatibleVersion,
    IntegrationEvent,
    MalformedMessage,
    MessageContext,
    MessageError,
    MessageRegistry,
    StateCodec,
    UnknownMessageType,
    new_id,
    utc_now,
)

# -- messages used below ---------------------------------------------------------------------------


class LicensePurchased(DomainEvent, name="licensing.LicensePurchased"):
    license_id: str
    buyer: str
    price_cents: int
    currency: str = "EUR"


class Seat(msgspec.Struct):
    user: str
    admin: bool = False


class SeatsAssigned(DomainEvent, name="licensing.SeatsAssigned"):
    license_id: str
    seats: list[Seat]


class PurchaseLicense(Command, name="licensing.PurchaseLicense"):
    license_id: str
    buyer: str
    quantity: int = 1

    def validate(self) -> None:
        if self.quantity < 1:
            raise ValidationError("must be at least 1", field="quantity", message_type="PurchaseLicense")


# Version 3 of a contract whose history is: v1 {"licence", "customer"}; v2 renamed to
# {"license_id", "buyer_id"}; v3 added a required "price_cents" (old sales were free).
class PurchaseConfirmed(IntegrationEvent, name="licensing.PurchaseConfirmed", version=3):
    license_id: str
    buyer_id: str
    price_cents: int


def registry_with_upcasters() -> MessageRegistry:
    """A registry that knows PurchaseConfirmed v3 and can upcast v1 → v2 → v3."""
    registry = MessageRegistry([PurchaseConfirmed])

    @registry.upcaster("licensing.PurchaseConfirmed", 1)
    def _v1_to_v2(data: dict[str, object]) -> dict[str, object]:
        return {"license_id": data["licence"], "buyer_id": data["customer"]}

    @registry.upcaster("licensing.PurchaseConfirmed", 2)
    def _v2_to_v3(data: dict[str, object]) -> dict[str, object]:
        return {**data, "price_cents": 0}

    return registry


# -- registry round trip ---------------------------------------------------------------------------


def test_registered_message_reads_back_equal() -> None:
    # Given a registry that knows a domain event
    registry = MessageRegistry([LicensePurchased])
    event = LicensePurchased(license_id="lic-1", buyer="ada", price_cents=1200, currency="USD")

    # When it is encoded and decoded under its name and version
    data = registry.encode(event)
    back = registry.decode(LicensePurchased.message_name, LicensePurchased.message_version, data)

    # Then the same typed message comes back, from compact JSON with its fields only
    assert back == event
    assert type(back) is LicensePurchased
    assert msgspec.json.decode(data) == {"license_id": "lic-1", "buyer": "ada", "price_cents": 1200, "currency": "USD"}


def test_nested_structures_round_trip_with_their_types() -> None:
    # Given an event carrying a list of structs
    registry = MessageRegistry([SeatsAssigned])
    event = SeatsAssigned(license_id="lic-1", seats=[Seat(user="ada", admin=True), Seat(user="bob")])

    # When it round trips
    back = registry.decode("licensing.SeatsAssigned", 1, registry.encode(event))

    # Then the nested values are structs again, not dicts
    assert back == event
    assert isinstance(back.seats[0], Seat)  # type: ignore[attr-defined]


@settings(max_examples=200, deadline=None)
@given(
    license_id=st.text(),
    buyer=st.text(),
    price_cents=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    currency=st.text(max_size=8),
)
def test_any_field_values_round_trip(license_id: str, buyer: str, price_cents: int, currency: str) -> None:
    # Given any text and any 64-bit integer in the fields
    registry = MessageRegistry([LicensePurchased])
    event = LicensePurchased(license_id=license_id, buyer=buyer, price_cents=price_cents, currency=currency)

    # When the event is encoded and decoded / then it is unchanged
    assert registry.decode("licensing.LicensePurchased", 1, registry.encode(event)) == event


@settings(max_examples=100, deadline=None)
@given(seats=st.lists(st.builds(Seat, user=st.text(), admin=st.booleans()), max_size=20))
def test_any_list_of_nested_values_round_trips(seats: list[Seat]) -> None:
    # Given any list of seats
    registry = MessageRegistry([SeatsAssigned])
    event = SeatsAssigned(license_id="lic-1", seats=seats)

    # When the event is encoded and decoded / then it is unchanged
    assert registry.decode("licensing.SeatsAssigned", 1, registry.encode(event)) == event


def test_type_for_and_names_list_what_is_registered() -> None:
    # Given a registry with two classes, one registered twice
    registry = MessageRegistry()
    registry.register(LicensePurchased, PurchaseLicense)
    registry.register(LicensePurchased)

    # Then both are known by their message names
    assert registry.type_for("licensing.LicensePurchased") is LicensePurchased
    assert "licensing.PurchaseLicense" in registry
    assert "LicensePurchased" not in registry
    assert registry.names == ["licensing.LicensePurchased", "licensing.PurchaseLicense"]


def test_two_classes_with_the_same_message_name_are_refused() -> None:
    # Given a registry that knows LicensePurchased
    registry = MessageRegistry([LicensePurchased])

    class Impostor(DomainEvent, name="licensing.LicensePurchased"):
        license_id: str

    # When another class claims the same name
    with pytest.raises(ValueError) as raised:
        registry.register(Impostor)

    # Then the error names both classes and the fix, and the first class keeps the name
    message = str(raised.value)
    assert "'licensing.LicensePurchased'" in message
    assert "LicensePurchased" in message and "Impostor" in message
    assert "name=" in message
    assert registry.type_for("licensing.LicensePurchased") is LicensePurchased


# -- versions and upcasting ------------------------------------------------------------------------


def test_v1_payload_reads_back_as_v2_through_an_upcaster() -> None:
    # Given v2 of an event whose v1 called the buyer "customer"
    class Renewed(IntegrationEvent, name="licensing.Renewed", version=2):
        license_id: str
        buyer_id: str

    registry = MessageRegistry([Renewed])

    @registry.upcaster("licensing.Renewed", 1)
    def _rename(data: dict[str, object]) -> dict[str, object]:
        data["buyer_id"] = data.pop("customer")
        return data

    # When a stored v1 payload is read
    event = registry.decode("licensing.Renewed", 1, b'{"license_id": "lic-1", "customer": "ada"}')

    # Then it is the current class with the renamed field
    assert event == Renewed(license_id="lic-1", buyer_id="ada")


def test_v1_payload_is_upcast_through_the_whole_chain_to_v3() -> None:
    # Given upcasters v1 → v2 and v2 → v3
    registry = registry_with_upcasters()

    # When v1 and v2 payloads are read
    from_v1 = registry.decode("licensing.PurchaseConfirmed", 1, b'{"licence": "lic-1", "customer": "ada"}')
    from_v2 = registry.decode("licensing.PurchaseConfirmed", 2, b'{"license_id": "lic-2", "buyer_id": "bob"}')

    # Then both arrive as v3
    assert from_v1 == PurchaseConfirmed(license_id="lic-1", buyer_id="ada", price_cents=0)
    assert from_v2 == PurchaseConfirmed(license_id="lic-2", buyer_id="bob", price_cents=0)


def test_current_version_payload_skips_the_upcasters() -> None:
    # Given a registry with upcasters
    registry = registry_with_upcasters()

    # When a v3 payload is read / then it is decoded as is (the v2 → v3 step would zero the price)
    event = registry.decode(
        "licensing.PurchaseConfirmed", 3, b'{"license_id": "lic-1", "buyer_id": "ada", "price_cents": 900}'
    )
    assert event == PurchaseConfirmed(license_id="lic-1", buyer_id="ada", price_cents=900)


def test_upcaster_gets_a_copy_and_cannot_alter_the_callers_dict() -> None:
    # Given a v2 dict handed to upcast directly
    registry = registry_with_upcasters()
    data = {"license_id": "lic-1", "buyer_id": "ada"}

    # When it is upcast
    upcast = registry.upcast("licensing.PurchaseConfirmed", 2, 3, data)

    # Then the result has the new field and the original is untouched
    assert upcast == {"license_id": "lic-1", "buyer_id": "ada", "price_cents": 0}
    assert data == {"license_id": "lic-1", "buyer_id": "ada"}


def test_missing_upcaster_raises_incompatible_version_naming_the_versions() -> None:
    # Given a registry that knows v3 and only the v2 → v3 upcaster
    registry = MessageRegistry([PurchaseConfirmed])

    @registry.upcaster("licensing.PurchaseConfirmed", 2)
    def _v2_to_v3(data: dict[str, object]) -> dict[str, object]:
        return {**data, "price_cents": 0}

    # When a v1 payload is read
    with pytest.raises(IncompatibleVersion) as raised:
        registry.decode("licensing.PurchaseConfirmed", 1, b'{"licence": "lic-1", "customer": "ada"}')

    # Then the error names the stored and current versions and the missing step
    error = raised.value
    assert (error.name, error.version, error.current) == ("licensing.PurchaseConfirmed", 1, 3)
    assert str(error) == (
        "licensing.PurchaseConfirmed v1 cannot be read as v3: no upcaster from v1 to v2; register one"
    )
    assert isinstance(error, MessageError)


def test_newer_than_code_version_raises_incompatible_version() -> None:
    # Given code that knows v3
    registry = registry_with_upcasters()

    # When a v4 payload arrives
    with pytest.raises(IncompatibleVersion) as raised:
        registry.decode("licensing.PurchaseConfirmed", 4, b'{"license_id": "lic-1"}')

    # Then it is refused with both versions and the fix
    assert (raised.value.version, raised.value.current) == (4, 3)
    assert "v4 cannot be read as v3" in str(raised.value)
    assert "newer than this code" in str(raised.value)


def test_upcaster_failing_on_a_bad_old_payload_raises_malformed_message() -> None:
    # Given upcasters that expect v1 fields
    registry = registry_with_upcasters()

    # When a v1 payload lacks one of them
    with pytest.raises(MalformedMessage) as raised:
        registry.decode("licensing.PurchaseConfirmed", 1, b'{"licence": "lic-1"}')

    # Then the reader gets a message error saying which step failed, not a bare KeyError
    assert "upcaster from v1 to v2 failed" in str(raised.value)
    assert "customer" in str(raised.value)


def test_upcast_payload_with_a_wrong_typed_field_is_malformed() -> None:
    # Given a v2 payload whose buyer id is a number
    registry = registry_with_upcasters()

    # When it is read / then the field is named
    with pytest.raises(MalformedMessage) as raised:
        registry.decode("licensing.PurchaseConfirmed", 2, b'{"license_id": "lic-1", "buyer_id": [1]}')
    assert raised.value.field == "buyer_id"


def test_old_version_payload_that_is_not_an_object_is_malformed() -> None:
    # Given a v1 payload that is a JSON array
    registry = registry_with_upcasters()

    # When it is read / then it is refused before any upcaster runs
    with pytest.raises(MalformedMessage, match="payload must be a JSON object, got list"):
        registry.decode("licensing.PurchaseConfirmed", 1, b'["lic-1", "ada"]')


# -- unknown types ---------------------------------------------------------------------------------


def test_unknown_type_raises_unknown_message_type_listing_the_known_types() -> None:
    # Given a registry with two types
    registry = MessageRegistry([LicensePurchased, PurchaseLicense])

    # When a payload of a third type is read
    with pytest.raises(UnknownMessageType) as raised:
        registry.decode("billing.InvoicePaid", 1, b"{}")

    # Then the error names it, lists the known ones and says what to do
    message = str(raised.value)
    assert raised.value.name == "billing.InvoicePaid"
    assert "'billing.InvoicePaid'" in message
    assert "known types: licensing.LicensePurchased, licensing.PurchaseLicense" in message
    assert "register the class" in message


def test_unknown_type_in_an_empty_registry_says_none_are_registered() -> None:
    # Given an empty registry / when a type is looked up / then the error says nothing is registered
    with pytest.raises(UnknownMessageType, match=r"\(none registered\)"):
        MessageRegistry().type_for("licensing.LicensePurchased")


# -- tolerant reading ------------------------------------------------------------------------------


def test_unknown_extra_fields_are_ignored() -> None:
    # Given a payload from a producer that added a field this consumer does not know
    registry = MessageRegistry([LicensePurchased])
    data = b'{"license_id": "lic-1", "buyer": "ada", "price_cents": 5, "currency": "USD", "coupon": "X1"}'

    # When it is read / then the known fields arrive and the extra one is dropped
    assert registry.decode("licensing.LicensePurchased", 1, data) == LicensePurchased(
        license_id="lic-1", buyer="ada", price_cents=5, currency="USD"
    )


def test_missing_fields_with_defaults_take_them() -> None:
    # Given a payload without the optional currency
    registry = MessageRegistry([LicensePurchased])

    # When it is read / then currency takes its declared default
    data = b'{"license_id": "lic-1", "buyer": "ada", "price_cents": 5}'
    event = registry.decode("licensing.LicensePurchased", 1, data)
    assert event == LicensePurchased(license_id="lic-1", buyer="ada", price_cents=5, currency="EUR")


# -- malformed payloads ----------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"{not json", b"", b'{"license_id": "lic-1",', b"\xff\xfe"])
def test_malformed_json_raises_malformed_message(data: bytes) -> None:
    # Given bytes that are not JSON
    registry = MessageRegistry([LicensePurchased])

    # When they are read / then the error says so and names the message type
    with pytest.raises(MalformedMessage) as raised:
        registry.decode("licensing.LicensePurchased", 1, data)
    assert "not valid JSON" in str(raised.value)
    assert raised.value.name == "licensing.LicensePurchased"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b'{"license_id": "lic-1", "buyer": "ada", "price_cents": "12"}', "price_cents"),
        (b'{"license_id": "lic-1", "buyer": 7, "price_cents": 12}', "buyer"),
        (b'{"license_id": "lic-1", "buyer": "ada", "price_cents": 1.5}', "price_cents"),
        (b'{"license_id": null, "buyer": "ada", "price_cents": 1}', "license_id"),
    ],
)
def test_wrong_typed_field_raises_malformed_message_naming_the_field(data: bytes, field: str) -> None:
    # Given a payload with one field of the wrong type
    registry = MessageRegistry([LicensePurchased])

    # When it is read
    with pytest.raises(MalformedMessage) as raised:
        registry.decode("licensing.LicensePurchased", 1, data)

    # Then the error names that field, in its attribute and in its text
    assert raised.value.field == field
    assert f"at field {field!r}" in str(raised.value)


def test_wrong_typed_nested_field_is_named_by_its_path() -> None:
    # Given a seat whose admin flag is a string
    registry = MessageRegistry([SeatsAssigned])
    data = b'{"license_id": "lic-1", "seats": [{"user": "ada"}, {"user": "bob", "admin": "yes"}]}'

    # When it is read / then the path to the bad value is named
    with pytest.raises(MalformedMessage) as raised:
        registry.decode("licensing.SeatsAssigned", 1, data)
    assert raised.value.field == "seats[1].admin"


def test_missing_required_field_raises_malformed_message_naming_the_field() -> None:
    # Given payloads lacking a required field, at the top and inside a nested value
    registry = MessageRegistry([LicensePurchased, SeatsAssigned])

    # When they are read / then the missing field is named with its path
    with pytest.raises(MalformedMessage) as top:
        registry.decode("licensing.LicensePurchased", 1, b'{"license_id": "lic-1", "price_cents": 1}')
    with pytest.raises(MalformedMessage) as nested:
        registry.decode("licensing.SeatsAssigned", 1, b'{"license_id": "lic-1", "seats": [{"admin": true}]}')
    assert top.value.field == "buyer"
    assert nested.value.field == "seats[0].user"


# -- validating hand-built commands -------------------------------------------------------------------


def test_validate_refuses_a_hand_built_command_with_a_wrong_type_naming_the_field() -> None:
    # Given a command built by hand with a string where an int belongs (Python does not check)
    registry = MessageRegistry([PurchaseLicense])
    command = PurchaseLicense(license_id="lic-1", buyer="ada", quantity="3")  # type: ignore[arg-type]

    # When the registry validates it
    with pytest.raises(ValidationError) as raised:
        registry.validate(command)

    # Then the error names the command type and the field
    assert raised.value.field == "quantity"
    assert str(raised.value).startswith("PurchaseLicense.quantity: Expected `int`, got `str`")


def test_validate_calls_the_commands_own_rules() -> None:
    # Given a well-typed command that breaks its own value rule
    registry = MessageRegistry([PurchaseLicense])
    command = PurchaseLicense(license_id="lic-1", buyer="ada", quantity=0)

    # When the registry validates it / then Command.validate's error comes through
    with pytest.raises(ValidationError) as raised:
        registry.validate(command)
    assert raised.value.field == "quantity"
    assert raised.value.reason == "must be at least 1"


def test_validate_returns_a_valid_command_equal_to_itself() -> None:
    # Given a valid command / when validated / then an equal command comes back
    registry = MessageRegistry([PurchaseLicense])
    command = PurchaseLicense(license_id="lic-1", buyer="ada", quantity=2)
    assert registry.validate(command) == command


def test_validate_names_the_path_of_a_wrong_typed_nested_value() -> None:
    # Given an event built with a list holding a non-seat
    registry = MessageRegistry([SeatsAssigned])
    event = SeatsAssigned(license_id="lic-1", seats=[Seat(user="ada"), Seat(user=5)])  # type: ignore[arg-type]

    # When validated / then the path to the bad value is named
    with pytest.raises(ValidationError) as raised:
        registry.validate(event)
    assert raised.value.field == "seats[1].user"


class ScheduleRenewal(Command, name="licensing.ScheduleRenewal"):
    license_id: str
    seats: list[Seat]
    at: datetime
    token: uuid.UUID
    plans: tuple[str, ...] = ()


def test_validate_returns_the_command_converted_to_its_declared_types() -> None:
    # Given a command built from plain data: a dict for a nested struct, strings for a time and a UUID, a list for a tuple
    registry = MessageRegistry([ScheduleRenewal])
    token = uuid.uuid4()
    command = ScheduleRenewal(
        license_id="lic-1",
        seats=[{"user": "ada"}],  # type: ignore[list-item]
        at="2026-05-01T08:00:00+02:00",  # type: ignore[arg-type]
        token=str(token),  # type: ignore[arg-type]
        plans=["team"],  # type: ignore[arg-type]
    )

    # When validated / then what comes back has the declared types (and equals what a reader would decode)
    converted = registry.validate(command)
    assert converted == ScheduleRenewal(
        license_id="lic-1",
        seats=[Seat(user="ada")],
        at=datetime(2026, 5, 1, 6, 0, tzinfo=UTC),
        token=token,
        plans=("team",),
    )
    assert converted == registry.decode("licensing.ScheduleRenewal", 1, MessageRegistry.encode(command))


# -- one family for bad input ------------------------------------------------------------------------


def test_bad_input_of_every_kind_is_a_validation_error_naming_the_field() -> None:
    registry = MessageRegistry([PurchaseLicense, SeatsAssigned])
    caught: list[ValidationError] = []

    # Given a message built with a missing, an unknown and a positional argument
    with pytest.raises(ValidationError) as missing:
        PurchaseLicense(license_id="lic-1")  # type: ignore[call-arg]
    caught.append(missing.value)
    with pytest.raises(ValidationError) as unknown:
        PurchaseLicense(license_id="lic-1", buyer="ada", colour="red")  # type: ignore[call-arg]
    caught.append(unknown.value)
    with pytest.raises(ValidationError) as positional:
        PurchaseLicense("lic-1", "ada")  # type: ignore[misc]
    caught.append(positional.value)
    # And plain data that does not fit, and a hand-built message of the wrong type
    with pytest.raises(ValidationError) as from_data:
        registry.convert("licensing.SeatsAssigned", {"license_id": "lic-1", "seats": [{"user": 5}]})
    caught.append(from_data.value)
    with pytest.raises(ValidationError) as from_bytes:
        registry.decode("licensing.PurchaseLicense", 1, b'{"license_id": "lic-1", "buyer": "ada", "quantity": "3"}')
    caught.append(from_bytes.value)
    with pytest.raises(ValidationError) as hand_built:
        registry.validate(PurchaseLicense(license_id="lic-1", buyer=7))  # type: ignore[arg-type]
    caught.append(hand_built.value)

    # Then each names the field, and the older names still catch what they caught before
    assert [error.field for error in caught] == ["buyer", "colour", "license_id", "seats[0].user", "quantity", "buyer"]
    assert str(missing.value) == "PurchaseLicense.buyer: is required; pass it as a keyword argument"
    assert str(unknown.value) == "PurchaseLicense.colour: no such field; the fields are license_id, buyer, quantity"
    assert "keyword arguments only (license_id=..., buyer=..., quantity=...), got 2 positional" in str(positional.value)
    assert all(isinstance(error, TypeError) for error in (missing.value, unknown.value, positional.value))
    assert all(isinstance(error, MalformedMessage) for error in (from_data.value, from_bytes.value))
    assert from_bytes.value.message_type == "licensing.PurchaseLicense"


def test_a_type_error_raised_by_a_messages_own_code_is_not_disguised() -> None:
    # Given a message whose __post_init__ raises TypeError for its own reasons
    class Strict(DomainEvent):
        n: int

        def __post_init__(self) -> None:
            raise TypeError("my own rule")

    # When it is built with correct arguments / then that TypeError comes through unchanged
    with pytest.raises(TypeError, match="my own rule") as raised:
        Strict(n=1)
    assert not isinstance(raised.value, ValidationError)


def test_a_state_that_does_not_fit_names_the_aggregate_not_an_internal_class() -> None:
    # Given a stored state whose seat list holds a number / when decoded
    with pytest.raises(ValidationError) as raised:
        StateCodec(Subscription).decode(b'{"seats": [1]}')
    # Then the error is about Subscription's state and its field
    assert "Subscription" in str(raised.value) and "SubscriptionState" not in str(raised.value)
    assert raised.value.field == "seats[0]"


# -- envelope --------------------------------------------------------------------------------------


def test_envelope_round_trips_through_msgspec_json() -> None:
    # Given an envelope with every field set
    envelope = Envelope(
        event_id=new_id(),
        event_type="licensing.LicensePurchased",
        schema_version=2,
        occurred_at=utc_now(),
        aggregate_type="License",
        aggregate_id="lic-1",
        aggregate_version=3,
        correlation_id=new_id(),
        causation_id=new_id(),
        user_id="ada",
        tenant="acme",
        source="licensing",
    )

    # When it is encoded and decoded
    back = msgspec.json.decode(msgspec.json.encode(envelope), type=Envelope)

    # Then it is equal, and its time is still an aware UTC datetime
    assert back == envelope
    assert back.occurred_at.utcoffset() == timedelta(0)


def test_envelope_needs_only_the_identifying_fields() -> None:
    # Given the minimal envelope JSON
    data = (
        b'{"event_id": "e", "event_type": "t", "schema_version": 1,'
        b' "occurred_at": "2024-05-01T12:00:00Z", "correlation_id": "c"}'
    )

    # When decoded / then optional metadata is None and the time is UTC
    envelope = msgspec.json.decode(data, type=Envelope)
    assert envelope.aggregate_id is None and envelope.tenant is None and envelope.source is None
    assert envelope.occurred_at == datetime(2024, 5, 1, 12, tzinfo=UTC)


def test_envelope_time_from_another_offset_is_the_same_instant() -> None:
    # Given an envelope stamped in UTC+2
    occurred = datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    envelope = Envelope(event_id="e", event_type="t", schema_version=1, occurred_at=occurred, correlation_id="c")

    # When it round trips / then it is the same instant
    back = msgspec.json.decode(msgspec.json.encode(envelope), type=Envelope)
    assert back.occurred_at == datetime(2024, 5, 1, 12, tzinfo=UTC)


def test_envelope_is_frozen_and_keyword_only() -> None:
    # Given an envelope
    envelope = Envelope(event_id="e", event_type="t", schema_version=1, occurred_at=utc_now(), correlation_id="c")

    # When it is changed or built positionally / then both are refused
    with pytest.raises(AttributeError):
        envelope.tenant = "acme"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Envelope("e", "t", 1, utc_now(), "c")  # type: ignore[misc]


def test_utc_now_is_aware_utc() -> None:
    # Given / when the clock is read / then it is aware and at offset zero
    now = utc_now()
    assert now.tzinfo is not None
    assert now.utcoffset() == timedelta(0)


def test_message_context_fields_default_to_none() -> None:
    # Given an empty context / then the application will fill every field
    assert msgspec.structs.asdict(MessageContext()) == {
        "correlation_id": None,
        "causation_id": None,
        "user_id": None,
        "tenant": None,
    }


# -- ids -------------------------------------------------------------------------------------------


def test_new_id_is_a_canonical_uuid7_string() -> None:
    # Given a new id
    value = new_id()

    # Then it is the canonical 36-character form with version nibble 7 and the RFC 4122 variant
    assert len(value) == 36
    assert value == str(uuid.UUID(value))
    assert value[14] == "7"
    assert uuid.UUID(value).version == 7
    assert uuid.UUID(value).variant == uuid.RFC_4122


def test_new_ids_sort_by_creation_order_across_many_calls() -> None:
    # Given many ids made in a tight loop (many share a millisecond)
    ids = [new_id() for _ in range(20_000)]

    # Then they are unique and their text order is their creation order
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


# -- state codec -----------------------------------------------------------------------------------


class Subscription(StateStoredAggregate):
    plan: str = "free"
    seats: list[str] = []
    limits: dict[str, int] = {"projects": 3}
    renewed_at: datetime | None = None
    members_by_team: dict[str, list[str]] = {"core": []}


class Meter(EventSourcedAggregate):
    readings: list[int] = []
    total: int = 0


def test_state_codec_round_trips_an_aggregates_state_with_types() -> None:
    # Given a subscription with every kind of field set
    subscription = Subscription("sub-1")
    subscription.plan = "team"
    subscription.seats = ["ada", "bob"]
    subscription.limits = {"projects": 50}
    subscription.renewed_at = datetime(2024, 5, 1, 12, tzinfo=UTC)
    codec = StateCodec(Subscription)

    # When its state is encoded and decoded
    state = codec.decode(codec.encode(subscription.state()))

    # Then the state is equal and the datetime is a datetime again
    assert state == subscription.state()
    assert isinstance(state["renewed_at"], datetime)
    restored = Subscription.restore("sub-1", 4, state)
    assert restored.state() == subscription.state()


def test_state_codec_fills_defaults_for_missing_fields() -> None:
    # Given a row saved before most fields existed
    codec = StateCodec(Subscription)

    # When it is decoded
    state = codec.decode(b'{"plan": "team"}')

    # Then missing fields take their declared defaults
    assert state == {
        "plan": "team",
        "seats": [],
        "limits": {"projects": 3},
        "renewed_at": None,
        "members_by_team": {"core": []},
    }


def test_state_codec_defaults_are_fresh_copies() -> None:
    # Given a decoded state whose defaults were filled in and then mutated
    codec = StateCodec(Subscription)
    first = codec.decode(b"{}")
    first["seats"].append("ada")
    first["members_by_team"]["core"].append("ada")

    # When another state is decoded / then its defaults are untouched, as is the class attribute
    second = codec.decode(b"{}")
    assert second["seats"] == []
    assert second["members_by_team"] == {"core": []}
    assert Subscription.members_by_team == {"core": []}


def test_state_codec_refuses_a_wrong_typed_field() -> None:
    # Given a stored state whose seat list holds a number
    codec = StateCodec(Subscription)

    # When decoded / then a tidings error names the path (never a raw msgspec error)
    with pytest.raises(MalformedMessage, match=r"\$\.seats\[0\]"):
        codec.decode(b'{"seats": [1]}')


@settings(max_examples=100, deadline=None)
@given(
    readings=st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=30),
    total=st.integers(-(2**31), 2**31),
)
def test_state_codec_round_trips_any_event_sourced_state(readings: list[int], total: int) -> None:
    # Given any meter state
    codec = StateCodec(Meter)
    meter = Meter.restore("m-1", 1, {"readings": readings, "total": total})

    # When it is encoded and decoded / then it is unchanged
    assert codec.decode(codec.encode(meter.state())) == {"readings": readings, "total": total}


def test_an_upcast_payload_is_checked_as_strictly_as_a_current_one() -> None:
    # Given a v2 payload whose price is a string (the upcaster passes it through)
    registry = registry_with_upcasters()
    current = b'{"license_id": "L1", "buyer_id": "ada", "price_cents": "12"}'
    old = b'{"license_id": "L1", "buyer_id": "ada"}'

    # When either version is read / then the same wrong type is refused, not coerced
    with pytest.raises(MalformedMessage) as at_v3:
        registry.decode("licensing.PurchaseConfirmed", 3, current)
    assert at_v3.value.field == "price_cents"

    @registry.upcaster("licensing.PurchaseConfirmed", 2)
    def _stringly(data: dict[str, object]) -> dict[str, object]:
        return {**data, "price_cents": "12"}

    with pytest.raises(MalformedMessage) as at_v2:
        registry.decode("licensing.PurchaseConfirmed", 2, old)
    assert at_v2.value.field == "price_cents"


def test_a_bool_is_not_a_message_version() -> None:
    # Given / when a message declares version=True / then the class statement is refused
    with pytest.raises(TypeError, match="positive int"):

        class Odd(DomainEvent, version=True):  # type: ignore[call-arg]
            x: int
