"""`tidings contracts check`: a verdict per contract against the lock, each change explained by field path.

Each case is one edge case that fools plain schema diffs, with the verdict tidings gives it (decision 0022).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

import msgspec
import pytest

from tidings.contracts import Verdict, catalog_of, check
from tidings.contracts.compat import ContractReport, lock_document
from tidings.messaging import IntegrationEvent, MessageRegistry

NAME = "shop.OrderPlaced"


def report(locked: Any, now: Any, *, today: date | None = None) -> ContractReport:
    """The report on NAME when the code holds ``now`` and the lock was written from ``locked``."""
    [result] = [r for r in check(catalog_of(now), lock_document(catalog_of(locked)), today=today) if r.name == NAME]
    return result


def paths(result: ContractReport) -> dict[str, str]:
    return {change.path: change.describe() for change in result.changes}


def test_no_change_is_full() -> None:
    class Old(IntegrationEvent, name=NAME):
        order_id: str

    assert report(Old, Old).verdict is Verdict.FULL


def test_adding_an_optional_field_with_a_default_is_full_because_readers_ignore_unknown_fields() -> None:
    class Old(IntegrationEvent, name=NAME):
        order_id: str

    class New(IntegrationEvent, name=NAME):
        order_id: str
        coupon: str | None = None

    assert report(Old, New).verdict is Verdict.FULL


def test_adding_a_required_field_in_place_is_breaking_and_says_make_it_optional_or_bump() -> None:
    class Old(IntegrationEvent, name=NAME):
        order_id: str

    class New(IntegrationEvent, name=NAME):
        order_id: str
        currency: str

    result = report(Old, New)
    assert result.verdict is Verdict.BREAKING
    assert "v1 currency: is required, but the writer does not send it" in paths(result)["currency"]
    assert "fix: make the field optional with a default, or bump to version 2 and add an upcaster from 1" in paths(result)["currency"]


def test_removing_a_required_field_is_backward_only_deploy_consumers_first() -> None:
    class Old(IntegrationEvent, name=NAME):
        order_id: str
        note: str

    class New(IntegrationEvent, name=NAME):
        order_id: str

    result = report(Old, New)
    # New readers ignore the note old payloads carry; old readers miss it in new payloads
    assert result.verdict is Verdict.BACKWARD
    assert "note: is required, but the writer does not send it" in paths(result)["note"]


def test_an_optional_field_made_required_is_breaking() -> None:
    class Old(IntegrationEvent, name=NAME):
        order_id: str
        note: str = ""

    class New(IntegrationEvent, name=NAME):
        order_id: str
        note: str

    result = report(Old, New)
    assert result.verdict is Verdict.BREAKING
    assert "note: is no longer optional" in paths(result)["note"]


def test_int_widened_to_float_is_backward_and_float_narrowed_to_int_is_breaking() -> None:
    class IntPrice(IntegrationEvent, name=NAME):
        price: int

    class FloatPrice(IntegrationEvent, name=NAME):
        price: float

    widened = report(IntPrice, FloatPrice)
    assert widened.verdict is Verdict.BACKWARD  # 3 reads as a float; an old reader refuses 1.5
    narrowed = report(FloatPrice, IntPrice)
    assert narrowed.verdict is Verdict.BREAKING
    assert "price: narrowed from number to integer" in paths(narrowed)["price"]


def test_a_type_change_names_both_types() -> None:
    class Old(IntegrationEvent, name=NAME):
        quantity: int

    class New(IntegrationEvent, name=NAME):
        quantity: str

    result = report(Old, New)
    assert result.verdict is Verdict.BREAKING
    assert "quantity: type changed from integer to string" in paths(result)["quantity"]


def test_removing_an_enum_value_is_breaking_and_adding_one_is_backward() -> None:
    class Three(IntegrationEvent, name=NAME):
        status: Literal["new", "paid", "shipped"]

    class Two(IntegrationEvent, name=NAME):
        status: Literal["new", "paid"]

    removed = report(Three, Two)
    assert removed.verdict is Verdict.BREAKING
    assert 'status: enum value "shipped" is written but no longer accepted' in paths(removed)["status"]
    assert report(Two, Three).verdict is Verdict.BACKWARD


def test_nullable_is_not_optional_null_written_to_an_old_reader_is_backward_only() -> None:
    class Required(IntegrationEvent, name=NAME):
        coupon: str

    class Nullable(IntegrationEvent, name=NAME):
        coupon: str | None

    # Still required, now nullable: new readers read every old string, old readers refuse null
    result = report(Required, Nullable)
    assert result.verdict is Verdict.BACKWARD
    assert "coupon: null is written (the field is nullable), but the reader does not accept null" in paths(result)["coupon"]
    # The other way, a nullable field made non-null: stored nulls no longer read
    assert report(Nullable, Required).verdict is Verdict.BREAKING


def test_changing_a_default_reinterprets_payloads_without_the_field_and_is_breaking() -> None:
    class EmptyDefault(IntegrationEvent, name=NAME):
        coupon: str = ""

    class NullDefault(IntegrationEvent, name=NAME):
        coupon: str | None = None

    result = report(EmptyDefault, NullDefault)
    assert result.verdict is Verdict.BREAKING
    assert 'coupon: default changed from "" to null' in paths(result)["coupon"]


def test_a_union_member_removed_is_breaking_and_added_is_backward() -> None:
    class Wide(IntegrationEvent, name=NAME):
        reference: int | str

    class Narrow(IntegrationEvent, name=NAME):
        reference: int

    result = report(Wide, Narrow)
    assert result.verdict is Verdict.BREAKING
    assert "reference: type changed from string to integer" in paths(result)["reference"]
    assert report(Narrow, Wide).verdict is Verdict.BACKWARD


class Address(msgspec.Struct):
    street: str
    city: str


class Place(msgspec.Struct):  # the same shape as Address under another name
    street: str
    city: str


class StrictAddress(msgspec.Struct, forbid_unknown_fields=True):
    street: str


class ZipAddress(msgspec.Struct):
    street: str
    city: str
    zip: int


def test_a_nested_field_change_is_reported_by_its_full_path() -> None:
    class Old(IntegrationEvent, name=NAME):
        ship_to: Address

    class New(IntegrationEvent, name=NAME):
        ship_to: ZipAddress

    result = report(Old, New)
    assert result.verdict is Verdict.BREAKING
    assert "ship_to.zip: is required, but the writer does not send it" in paths(result)["ship_to.zip"]


def test_a_renamed_nested_type_of_the_same_shape_is_no_change() -> None:
    class Old(IntegrationEvent, name=NAME):
        ship_to: Address

    class New(IntegrationEvent, name=NAME):
        ship_to: Place

    assert report(Old, New).verdict is Verdict.FULL


def test_a_closed_reader_refuses_fields_an_open_one_ignores() -> None:
    class Open(IntegrationEvent, name=NAME):
        ship_to: Address

    class Closed(IntegrationEvent, name=NAME):
        ship_to: StrictAddress

    # Closing the model in place: old payloads carry city, which the closed reader refuses
    result = report(Open, Closed)
    assert result.verdict is Verdict.BREAKING
    assert "ship_to.city: is written, but the reader's closed model refuses unknown fields" in paths(result)["ship_to.city"]


def test_str_to_datetime_goes_unseen_because_msgspec_exports_both_as_plain_strings() -> None:
    class Text(IntegrationEvent, name=NAME):
        at: str

    class Stamp(IntegrationEvent, name=NAME):
        at: datetime

    # A known blind spot, pinned so it is not forgotten: msgspec 0.22 exports datetime as
    # {"type": "string"} with no format, so the schemas agree although "soon" no longer reads.
    assert report(Text, Stamp).verdict is Verdict.FULL


def test_a_new_version_with_a_required_field_is_backward_when_an_upcaster_reads_the_old_one() -> None:
    class V1(IntegrationEvent, name=NAME, version=1):
        order_id: str

    class V2(IntegrationEvent, name=NAME, version=2):
        order_id: str
        currency: str

    registry = MessageRegistry([V2])
    registry.upcaster(V2, 1)(lambda data: {**data, "currency": "EUR"})
    result = report(V1, [registry, V1])
    assert result.verdict is Verdict.BACKWARD
    assert "new version v2, read back from v1 through upcasters" in result.changes[0].describe()


def test_a_new_version_without_an_upcaster_is_breaking_and_names_the_upcaster_to_add() -> None:
    class V1(IntegrationEvent, name=NAME, version=1):
        order_id: str

    class V2(IntegrationEvent, name=NAME, version=2):
        order_id: str
        currency: str

    result = report(V1, V2)
    assert result.verdict is Verdict.BREAKING
    assert any("fix: register an upcaster from 1 to 2" in change.describe() for change in result.changes)


def test_changing_an_old_version_in_place_is_breaking_whatever_the_upcaster_does() -> None:
    class V1(IntegrationEvent, name=NAME, version=1):
        order_id: str

    class V2(IntegrationEvent, name=NAME, version=2):
        order_id: str
        currency: str

    registry = MessageRegistry([V2])
    registry.upcaster(V2, 1)(lambda data: {**data, "currency": "EUR"})
    locked = lock_document(catalog_of([registry, V1]))

    class V1Edited(IntegrationEvent, name=NAME, version=1):
        order_id: str
        channel: str = "web"

    [result] = check(catalog_of([registry, V1Edited]), locked)
    assert result.verdict is Verdict.BREAKING
    assert "v1 channel:" in result.changes[0].describe() and "v1 changed in place" in result.changes[0].describe()
    assert "fix: restore v1 as locked; put the change in a new version with an upcaster" in result.changes[0].describe()


def test_dropping_an_old_version_is_forward_after_its_deprecation_date_and_breaking_before() -> None:
    class V1(IntegrationEvent, name=NAME, version=1, deprecated_after="2026-06-30"):
        order_id: str

    class V2(IntegrationEvent, name=NAME, version=2):
        order_id: str
        currency: str

    registry = MessageRegistry([V2])
    registry.upcaster(V2, 1)(lambda data: {**data, "currency": "EUR"})
    locked = lock_document(catalog_of([registry, V1]))
    without_upcaster = catalog_of(V2)
    [after] = check(without_upcaster, locked, today=date(2026, 7, 1))
    assert after.verdict is Verdict.FORWARD
    [before] = check(without_upcaster, locked, today=date(2026, 6, 1))
    assert before.verdict is Verdict.BREAKING
    assert "fix: restore the upcaster from 1" in before.changes[0].describe()


def test_a_changed_topic_or_key_is_breaking_and_a_removed_contract_too() -> None:
    class Old(IntegrationEvent, name=NAME, topic="shop.orders", key="order_id"):
        order_id: str
        customer_id: str

    class Moved(IntegrationEvent, name=NAME, topic="shop.orders-v2", key="customer_id"):
        order_id: str
        customer_id: str

    result = report(Old, Moved)
    assert result.verdict is Verdict.BREAKING
    assert any("topic changed from 'shop.orders' to 'shop.orders-v2'" in c.describe() for c in result.changes)
    assert any("partition key changed from 'order_id' to 'customer_id'" in c.describe() for c in result.changes)

    class Other(IntegrationEvent, name="shop.Other"):
        x: int

    [gone, new] = check(catalog_of(Other), lock_document(catalog_of(Old)))
    assert (gone.name, gone.verdict) == (NAME, Verdict.BREAKING)
    assert (new.name, new.verdict, new.note) == ("shop.Other", Verdict.FULL, "new contract, not locked yet: run `tidings contracts lock`")


@pytest.mark.parametrize("content", ["not json", '{"format": "other"}'])
def test_a_broken_lock_file_is_refused_saying_what_to_do(tmp_path: Any, content: str) -> None:
    from typer.testing import CliRunner

    from tidings.cli import app as cli

    lock = tmp_path / "contracts.lock.json"
    lock.write_text(content)
    args = ["contracts", "check", "--app", "examples.licensing.contracts:CONTRACTS", "--lock", str(lock)]
    result = CliRunner().invoke(cli, args, env={"COLUMNS": "400"})
    assert result.exit_code == 2
    assert "restore it from version control" in result.output or "is not a tidings contracts lock" in result.output


def test_a_new_version_whose_upcaster_fails_on_an_old_payload_is_breaking() -> None:
    class V1(IntegrationEvent, name=NAME, version=1):
        order_id: str
        total: int

    class V2(IntegrationEvent, name=NAME, version=2):
        order_id: str
        total_cents: int

    registry = MessageRegistry([V2])
    # Forgets to rename total → total_cents: v1 payloads would be dead-lettered as malformed
    registry.upcaster(V2, 1)(lambda data: data)
    result = report(V1, [registry, V1])
    assert result.verdict is Verdict.BREAKING
    described = result.changes[0].describe()
    assert 'the upcasters from v1 fail on a v1 payload {"order_id": "text", "total": 1}' in described
    assert "total_cents" in described and "fix: make the upcaster chain from 1 produce a valid v2 payload" in described
