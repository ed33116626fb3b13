"""Specification of the domain layer: aggregates, domain events, commands and the domain's errors.

Everything here runs without a database: an aggregate is plain Python that records events.
"""

from __future__ import annotations

import dataclasses

import pytest

from tidings.domain import (
    AggregateNotFound,
    Command,
    ConcurrencyError,
    DomainError,
    DomainEvent,
    EventSourcedAggregate,
    StateStoredAggregate,
    ValidationError,
    applies,
)

# -- a small licensing model used by most tests ------------------------------------------------


class LicenseIssued(DomainEvent):
    product: str


class LicensePurchased(DomainEvent, name="licensing.LicensePurchased", version=2):
    buyer: str
    price_cents: int = 0


class LicenseRevoked(DomainEvent):
    reason: str


class PurchaseLicense(Command):
    license_id: str
    buyer: str


class License(StateStoredAggregate):
    product: str = ""
    buyer: str | None = None
    history: list[str] = []
    seats_by_team: dict[str, list[str]] = {"default": []}

    def issue(self, product: str) -> None:
        self.record(LicenseIssued(product=product))

    def purchase(self, buyer: str) -> None:
        if self.buyer is not None:
            raise DomainError(f"License {self.id} is already sold to {self.buyer}")
        self.record(LicensePurchased(buyer=buyer, price_cents=1200))

    @applies
    def _issued(self, event: LicenseIssued) -> None:
        self.product = event.product
        self.history.append("issued")

    @applies
    def _purchased(self, event: LicensePurchased) -> None:
        self.buyer = event.buyer
        self.history.append(f"purchased by {event.buyer}")


class Ledger(EventSourcedAggregate, name="billing.Ledger"):
    balance: int = 0

    @applies
    def _issued(self, event: LicenseIssued) -> None:
        self.balance += 0

    @applies
    def _purchased(self, event: LicensePurchased) -> None:
        self.balance += event.price_cents


# -- recording -----------------------------------------------------------------------------------


def test_recording_applies_the_event_collects_it_and_bumps_the_version() -> None:
    # Given a fresh license
    license = License("lic-1")
    assert license.version == 0

    # When it is issued and purchased
    license.issue("editor")
    license.purchase("ada")

    # Then state reflects both events, in order, and both wait to be saved
    assert license.product == "editor"
    assert license.buyer == "ada"
    assert license.history == ["issued", "purchased by ada"]
    assert license.version == 2
    assert license.pending_events == [
        LicenseIssued(product="editor"),
        LicensePurchased(buyer="ada", price_cents=1200),
    ]


def test_second_purchase_is_refused_and_records_nothing() -> None:
    # Given a license already sold
    license = License("lic-1")
    license.purchase("ada")

    # When another buyer tries to purchase it
    with pytest.raises(DomainError, match="lic-1 is already sold to ada"):
        license.purchase("bob")

    # Then neither state nor version nor pending events changed
    assert license.buyer == "ada"
    assert license.version == 1
    assert len(license.pending_events) == 1


def test_take_pending_hands_over_events_in_recording_order_and_forgets_them() -> None:
    # Given two aggregates recording interleaved events
    first, second = License("a"), License("b")
    first.issue("editor")
    second.issue("viewer")
    first.purchase("ada")

    # When the unit of work takes their pending events
    taken_first = first.take_pending()
    taken_second = second.take_pending()

    # Then the recording order numbers interleave as recorded, and nothing stays pending
    orders = sorted([(order, "first") for order, _ in taken_first] + [(order, "second") for order, _ in taken_second])
    assert [who for _, who in orders] == ["first", "second", "first"]
    assert first.pending_events == [] and second.pending_events == []
    # The version is not reset by handing events over: it counts what was applied.
    assert first.version == 2


def test_record_refuses_something_that_is_not_a_domain_event() -> None:
    # Given a license
    license = License("lic-1")

    # When it is asked to record a command
    with pytest.raises(TypeError, match="License.record takes a DomainEvent, got PurchaseLicense"):
        license.record(PurchaseLicense(license_id="lic-1", buyer="ada"))  # type: ignore[arg-type]

    # Then nothing was recorded
    assert license.version == 0


def test_state_stored_aggregate_may_record_an_event_without_an_applier() -> None:
    # Given a state-stored aggregate with no applier for LicenseRevoked
    license = License("lic-1")

    # When it records one
    license.record(LicenseRevoked(reason="fraud"))

    # Then the event is kept for the journal and the version moves on
    assert license.pending_events == [LicenseRevoked(reason="fraud")]
    assert license.version == 1


def test_event_sourced_aggregate_without_an_applier_raises_a_clear_type_error() -> None:
    # Given an event-sourced ledger that has no @applies method for LicenseRevoked
    ledger = Ledger("ledger-1")

    # When it records one
    with pytest.raises(TypeError) as raised:
        ledger.record(LicenseRevoked(reason="fraud"))

    # Then the error names the aggregate, the event and the fix, and nothing was recorded
    message = str(raised.value)
    assert "Ledger is event-sourced" in message
    assert "no @applies method for LicenseRevoked" in message
    assert "add one" in message
    assert ledger.version == 0
    assert ledger.pending_events == []


def test_applies_method_without_an_event_annotation_is_refused_with_the_fix() -> None:
    # Given an aggregate whose @applies method does not annotate its event parameter
    class Broken(StateStoredAggregate):
        @applies
        def _issued(self, event) -> None:  # type: ignore[no-untyped-def]
            pass

    # When it records an event (appliers are resolved lazily, on first use)
    with pytest.raises(TypeError, match=r"Broken\._issued: an @applies method takes \(self, event: SomeDomainEvent\)"):
        Broken("b-1").record(LicenseIssued(product="x"))


def test_appliers_are_inherited_and_overridable() -> None:
    # Given a subclass that overrides one applier and inherits the other
    class AuditedLicense(License):
        @applies
        def _purchased(self, event: LicensePurchased) -> None:
            self.buyer = event.buyer.upper()

    # When it records both events
    license = AuditedLicense("lic-1")
    license.issue("editor")
    license.purchase("ada")

    # Then the inherited one and the override both ran
    assert license.product == "editor"
    assert license.buyer == "ADA"
    assert AuditedLicense.aggregate_type == "AuditedLicense"


def test_aggregate_needs_a_non_empty_string_id() -> None:
    # Given / when an aggregate is built with an empty or non-string id / then it is refused
    with pytest.raises(TypeError, match="License.id: needs a non-empty str id, got ''"):
        License("")
    with pytest.raises(TypeError, match="got 7"):
        License(7)  # type: ignore[arg-type]


def test_aggregate_type_defaults_to_the_class_name_and_may_be_named() -> None:
    # Given the two model aggregates / then their types are the class name or the name= keyword
    assert License.aggregate_type == "License"
    assert Ledger.aggregate_type == "billing.Ledger"
    assert Ledger.event_sourced is True and License.event_sourced is False


# -- state, restore, replay ----------------------------------------------------------------------


def test_state_lists_declared_attributes_only() -> None:
    # Given a license with some state and some class-level bookkeeping
    license = License("lic-1")
    license.issue("editor")

    # When its state is read
    state = license.state()

    # Then it holds the declared attributes and neither id, version nor private attributes
    assert state == {
        "product": "editor",
        "buyer": None,
        "history": ["issued"],
        "seats_by_team": {"default": []},
    }
    assert set(License.state_fields()) == {"product", "buyer", "history", "seats_by_team"}


def test_restore_rebuilds_an_aggregate_without_recording_anything() -> None:
    # Given the state of a purchased license saved at version 2
    saved = License("lic-1")
    saved.issue("editor")
    saved.purchase("ada")
    state, version = saved.state(), saved.version

    # When it is restored
    restored = License.restore("lic-1", version, state)

    # Then it has the same id, version and state, and nothing pending
    assert restored.id == "lic-1"
    assert restored.version == 2
    assert restored.state() == state
    assert restored.pending_events == []
    # And its invariants still hold on the restored state
    with pytest.raises(DomainError):
        restored.purchase("bob")


def test_restore_from_partial_state_fills_the_defaults() -> None:
    # Given a saved row written before `history` existed
    # When it is restored
    restored = License.restore("lic-1", 3, {"product": "editor", "buyer": "ada"})

    # Then the missing attribute takes its default
    assert restored.history == []
    assert restored.version == 3


def test_replay_applies_history_and_advances_the_version_without_recording() -> None:
    # Given the stored history of a ledger
    history = [
        LicenseIssued(product="editor"),
        LicensePurchased(buyer="ada", price_cents=1200),
        LicensePurchased(buyer="bob", price_cents=300),
    ]

    # When a fresh ledger replays it
    ledger = Ledger("ledger-1")
    ledger.replay(history)

    # Then state and version match the history and nothing is pending
    assert ledger.balance == 1500
    assert ledger.version == 3
    assert ledger.pending_events == []


def test_replay_from_a_snapshot_continues_at_the_snapshot_version() -> None:
    # Given a snapshot at version 2 and the events after it
    ledger = Ledger.restore("ledger-1", 2, {"balance": 1000})

    # When the later events are replayed and a new one recorded
    ledger.replay([LicensePurchased(buyer="bob", price_cents=300)])
    ledger.record(LicensePurchased(buyer="eve", price_cents=5))

    # Then versions continue from the snapshot and only the new event is pending
    assert ledger.balance == 1305
    assert ledger.version == 4
    assert ledger.pending_events == [LicensePurchased(buyer="eve", price_cents=5)]


def test_replay_of_an_event_without_an_applier_is_refused_for_event_sourced_aggregates() -> None:
    # Given a stream holding an event the ledger cannot apply
    ledger = Ledger("ledger-1")

    # When it is replayed / then the same clear error is raised
    with pytest.raises(TypeError, match="no @applies method for LicenseRevoked"):
        ledger.replay([LicenseRevoked(reason="fraud")])


def test_mutable_defaults_are_not_shared_between_instances() -> None:
    # Given two licenses
    first, second = License("a"), License("b")

    # When the first mutates its list default and the inner list of its dict default
    first.history.append("touched")
    first.seats_by_team["default"].append("ada")
    first.seats_by_team["ops"] = ["bob"]

    # Then the second and any new instance still see the declared defaults
    assert second.history == []
    assert second.seats_by_team == {"default": []}
    assert License("c").seats_by_team == {"default": []}
    assert License.seats_by_team == {"default": []}


# -- messages ------------------------------------------------------------------------------------


def test_domain_events_are_frozen() -> None:
    # Given a recorded fact
    event = LicenseIssued(product="editor")

    # When someone tries to change it / then it is refused
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.product = "viewer"  # type: ignore[misc]
    assert event.product == "editor"


def test_commands_are_frozen() -> None:
    # Given a command
    command = PurchaseLicense(license_id="lic-1", buyer="ada")

    # When someone tries to change it / then it is refused
    with pytest.raises(dataclasses.FrozenInstanceError):
        command.buyer = "bob"  # type: ignore[misc]


def test_messages_are_keyword_only() -> None:
    # Given message classes / when built positionally / then they are refused
    with pytest.raises(TypeError):
        LicenseIssued("editor")  # type: ignore[misc]
    with pytest.raises(TypeError):
        PurchaseLicense("lic-1", "ada")  # type: ignore[misc]


def test_messages_compare_by_value() -> None:
    # Given two events with the same fields / then they are equal (and hashable, being frozen)
    assert LicenseIssued(product="x") == LicenseIssued(product="x")
    assert LicenseIssued(product="x") != LicenseIssued(product="y")
    assert len({LicenseIssued(product="x"), LicenseIssued(product="x")}) == 1


def test_messages_get_a_name_and_a_version() -> None:
    # Given messages declared with and without class keywords
    # Then unnamed ones use the class name and version 1; keywords override both
    assert (LicenseIssued.message_name, LicenseIssued.message_version) == ("LicenseIssued", 1)
    assert (LicensePurchased.message_name, LicensePurchased.message_version) == ("licensing.LicensePurchased", 2)
    assert (PurchaseLicense.message_name, PurchaseLicense.message_version) == ("PurchaseLicense", 1)
    # And instances see the same class attributes
    assert LicensePurchased(buyer="ada").message_version == 2


@pytest.mark.parametrize("version", [0, -1])
def test_a_version_below_one_is_refused(version: int) -> None:
    # Given / when a message class is declared with a version below 1 / then the class statement fails
    with pytest.raises(TypeError, match=f"version must be a positive int, got {version}"):

        class Bad(DomainEvent, version=version):
            x: int


def test_a_non_integer_version_is_refused() -> None:
    # Given / when a message class is declared with a string version / then the class statement fails
    with pytest.raises(TypeError, match="version must be a positive int, got '2'"):

        class Bad(Command, version="2"):  # type: ignore[call-arg]
            x: int


def test_command_validate_accepts_everything_by_default_and_may_be_overridden() -> None:
    # Given a command with a value rule
    class Transfer(Command):
        amount_cents: int

        def validate(self) -> None:
            if self.amount_cents <= 0:
                raise ValidationError("must be positive", field="amount_cents", message_type="Transfer")

    # When valid and invalid commands are validated
    Transfer(amount_cents=5).validate()
    PurchaseLicense(license_id="lic-1", buyer="").validate()
    with pytest.raises(ValidationError) as raised:
        Transfer(amount_cents=0).validate()

    # Then the error names the message type and field
    assert str(raised.value) == "Transfer.amount_cents: must be positive"
    assert raised.value.field == "amount_cents"
    assert raised.value.reason == "must be positive"


# -- errors that teach ----------------------------------------------------------------------------


def test_concurrency_error_names_type_id_versions_and_what_to_do() -> None:
    # Given a save from version 3 onto a License already at version 4
    error = ConcurrencyError("License", "7f3a", expected=3, actual=4)

    # Then the message says what happened, to which aggregate, and what to do
    assert str(error) == "License 7f3a is at version 4, you saved from version 3 — reload and retry"
    assert (error.aggregate_type, error.aggregate_id, error.expected, error.actual) == ("License", "7f3a", 3, 4)


def test_concurrency_error_without_a_known_current_version_still_teaches() -> None:
    # Given a conflict whose winner's version is unknown
    error = ConcurrencyError("License", "7f3a", expected=3, actual=None)

    # Then it still names the aggregate, the expected version and the fix
    assert str(error) == "License 7f3a was changed concurrently, you saved from version 3 — reload and retry"


def test_aggregate_not_found_names_type_and_id_and_what_to_do() -> None:
    # Given a missing License
    error = AggregateNotFound("License", "7f3a")

    # Then the message names it and suggests the fix
    assert str(error) == "License 7f3a does not exist — check the id, or create it first"
    assert (error.aggregate_type, error.aggregate_id) == ("License", "7f3a")


def test_domain_error_carries_the_message_meant_for_the_user() -> None:
    # Given a broken invariant raised by an aggregate
    license = License("7f3a")
    license.purchase("ada")

    # When it is broken again
    with pytest.raises(DomainError) as raised:
        license.purchase("bob")

    # Then the message names the aggregate and its id
    assert "License 7f3a" in str(raised.value)


@pytest.mark.parametrize(
    ("field", "message_type", "expected"),
    [
        ("buyer", "PurchaseLicense", "PurchaseLicense.buyer: is empty"),
        ("buyer", None, "buyer: is empty"),
        (None, "PurchaseLicense", "PurchaseLicense: is empty"),
        (None, None, "is empty"),
    ],
)
def test_validation_error_prefixes_what_it_knows(field: str | None, message_type: str | None, expected: str) -> None:
    # Given a validation error with some of field and message type / then the text starts with them
    assert str(ValidationError("is empty", field=field, message_type=message_type)) == expected


def test_creating_an_existing_aggregate_says_it_already_exists() -> None:
    # Given a collision where the saver thought the aggregate was new (version 0)
    error = ConcurrencyError("License", "lic-1", expected=0, actual=3)

    # Then the message says it exists and that retrying the creation will not help
    assert str(error) == "License lic-1 already exists (at version 3) — it cannot be created again; load it instead"


def test_aggregate_built_with_a_bad_id_raises_a_validation_error_naming_the_id() -> None:
    # Given / when an aggregate is built with an empty id
    with pytest.raises(ValidationError) as raised:
        License("")
    # Then it is bad input like any other (and still the TypeError it always was)
    assert (raised.value.field, raised.value.message_type) == ("id", "License")
    assert isinstance(raised.value, TypeError)
