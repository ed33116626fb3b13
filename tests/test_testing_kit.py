"""Specification of tidings.testing, the kit users test with: scenarios, the harness, the pytest plugin.

A test kit that cannot fail is worse than none, so every helper is shown failing too, and its
message is read: a user sees nothing but that text when their expectation is wrong.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from unittest.mock import ANY

import pytest

from examples.quickstart.application import LicensePurchaseConfirmed, UsageViolationDetected, build
from examples.quickstart.domain import (
    License,
    LicenseOffered,
    LicensePurchased,
    OfferLicense,
    PurchaseLicense,
    ReportUsage,
    UsageExceededLicense,
    UsageReported,
)
from support import POSTGRES_URL, require_service
from tidings.domain import DomainError, DomainEvent, EventSourcedAggregate, applies
from tidings.testing import Harness, HarnessFactory, scenario
from tidings.testing.diff import first_difference

pytest_plugins = ["pytester"]

OFFERED = LicenseOffered(asset_id="asset-1", price_cents=1500, allowed_uses=2)
PURCHASED = LicensePurchased(buyer_id="ada")
purchased_license = scenario(License, "lic-1").given(OFFERED, PURCHASED)


# -- aggregates: then -------------------------------------------------------------------------------


def test_then_passes_when_the_recorded_events_match() -> None:
    # Given an offered and purchased license / when usage goes past the allowance
    outcome = purchased_license.when(lambda lic: lic.report_usage(3))

    # Then both events are expected and the check passes, leaving the outcome to inspect
    assert outcome.then(UsageReported(uses=3), UsageExceededLicense(used=3, allowed=2)) is outcome
    assert outcome.events == [UsageReported(uses=3), UsageExceededLicense(used=3, allowed=2)]


def test_then_fails_with_a_diff_that_marks_the_differing_field() -> None:
    outcome = purchased_license.when(lambda lic: lic.report_usage(3))

    # When the expectation has a wrong value in the second event
    with pytest.raises(AssertionError) as failure:
        outcome.then(UsageReported(uses=3), UsageExceededLicense(used=4, allowed=2))

    # Then the message names the aggregate, the event, the field and both values, and marks the line
    message = str(failure.value)
    assert message.startswith("License lic-1: the recorded events differ from the expected ones\n")
    assert "first difference: event #2 UsageExceededLicense, field `used`: expected 4, recorded 3" in message
    assert "  2. UsageExceededLicense(used=4, allowed=2)" in message  # the expected list
    assert "  2. UsageExceededLicense(used=3, allowed=2)" in message  # the recorded list
    marked = [line for line in message.splitlines() if line.endswith("<- first difference")]
    assert [line.split()[:3] for line in marked] == [["-", "used:", "4"], ["+", "used:", "3"]]
    # The field that is equal is context, not a difference
    assert "\n       allowed: 2" in message


def test_then_names_an_event_that_was_expected_but_not_recorded() -> None:
    outcome = purchased_license.when(lambda lic: lic.report_usage(1))

    with pytest.raises(AssertionError) as failure:
        outcome.then(UsageReported(uses=1), UsageExceededLicense(used=1, allowed=2))

    message = str(failure.value)
    assert "first difference: event #2 UsageExceededLicense was expected but not recorded" in message
    assert "- #2 UsageExceededLicense" in message
    assert "recorded (1 event):" in message


def test_then_names_a_wrong_event_type() -> None:
    outcome = purchased_license.when(lambda lic: lic.report_usage(1))

    with pytest.raises(AssertionError, match=r"event #1: expected LicensePurchased, recorded UsageReported"):
        outcome.then(LicensePurchased(buyer_id="ada"))


def test_then_accepts_any_for_a_field_the_test_does_not_care_about() -> None:
    outcome = purchased_license.when(lambda lic: lic.report_usage(3))
    outcome.then(UsageReported(uses=ANY), UsageExceededLicense(used=3, allowed=ANY))

    with pytest.raises(AssertionError, match="field `used`: expected 9"):
        outcome.then(UsageReported(uses=ANY), UsageExceededLicense(used=9, allowed=ANY))


def test_then_fails_when_the_method_raised_instead() -> None:
    outcome = purchased_license.when(lambda lic: lic.purchase("bob"))

    with pytest.raises(AssertionError) as failure:
        outcome.then(LicensePurchased(buyer_id="bob"))

    assert str(failure.value).startswith(
        "License lic-1: expected 1 event, but when raised DomainError: License lic-1 was already"
    )
    assert isinstance(failure.value.__cause__, DomainError)  # the original error and its traceback stay reachable


def test_then_nothing_passes_on_no_events_and_fails_with_the_recorded_ones() -> None:
    # A rule that refuses records nothing; after then_raises that is worth stating too
    purchased_license.when(lambda lic: lic.purchase("bob")).then_raises(DomainError).then_nothing()

    with pytest.raises(AssertionError) as failure:
        purchased_license.when(lambda lic: lic.report_usage(1)).then_nothing()

    message = str(failure.value)
    assert "License lic-1: expected no events, but 1 event recorded" in message
    assert "+ #1 UsageReported" in message
    assert "+      uses: 1" in message


# -- aggregates: then_raises ------------------------------------------------------------------------


def test_then_raises_passes_on_the_expected_error_and_message() -> None:
    outcome = purchased_license.when(lambda lic: lic.purchase("bob"))

    assert outcome.then_raises(DomainError, match="already purchased by ada") is outcome

    assert isinstance(outcome.error, DomainError)


def test_then_raises_fails_when_nothing_is_raised() -> None:
    outcome = scenario(License, "lic-1").given(OFFERED).when(lambda lic: lic.purchase("bob"))

    with pytest.raises(AssertionError) as failure:
        outcome.then_raises(DomainError, match="already")

    assert str(failure.value) == (
        "License lic-1: expected DomainError matching 'already', but nothing was raised; "
        "it recorded LicensePurchased(buyer_id='bob')"
    )


def test_then_raises_fails_on_another_error_type() -> None:
    outcome = purchased_license.when(lambda lic: lic.purchase("bob"))

    with pytest.raises(AssertionError) as failure:
        outcome.then_raises(ValueError)

    assert str(failure.value).startswith("License lic-1: expected ValueError, but DomainError was raised: License lic-1 was")
    assert isinstance(failure.value.__cause__, DomainError)


def test_then_raises_fails_when_the_message_does_not_match() -> None:
    outcome = purchased_license.when(lambda lic: lic.purchase("bob"))

    with pytest.raises(AssertionError) as failure:
        outcome.then_raises(DomainError, match="not purchased yet")

    assert "DomainError was raised, but its message does not match 'not purchased yet'" in str(failure.value)
    assert "already purchased by ada" in str(failure.value)


# -- aggregates: then_state, given, creation --------------------------------------------------------


def test_then_state_checks_attributes_and_predicates() -> None:
    outcome = purchased_license.when(lambda lic: lic.report_usage(1))
    outcome.then_state(used=1, buyer_id="ada", version=3).then_state(lambda lic: lic.used < lic.allowed_uses)

    with pytest.raises(AssertionError) as failure:
        outcome.then_state(used=2, buyer_id="ada")
    message = str(failure.value)
    assert "License lic-1: the state differs from the expected" in message
    assert "  used: expected 2, found 1" in message
    assert "buyer_id: expected" not in message  # only mismatches are listed as such

    with pytest.raises(AssertionError, match="does not satisfy the predicate"):
        outcome.then_state(lambda lic: lic.used > 5)
    with pytest.raises(TypeError, match="no state attribute owner"):
        outcome.then_state(owner="ada")


def test_a_scenario_is_reusable_because_each_when_starts_from_fresh_history() -> None:
    # Given one shared scenario, used twice: the first use must not leak into the second
    purchased_license.when(lambda lic: lic.report_usage(2)).then_state(used=2)
    purchased_license.when(lambda lic: lic.report_usage(2)).then(UsageReported(uses=2)).then_state(used=2)


def test_nothing_given_lets_when_create_the_aggregate_with_a_factory() -> None:
    scenario(License).when(lambda _: License.offer("lic-7", "asset-7", 900, 1)).then(
        LicenseOffered(asset_id="asset-7", price_cents=900, allowed_uses=1)
    ).then_state(id="lic-7", version=1, price_cents=900)


def test_given_state_starts_a_state_stored_aggregate_from_saved_attributes() -> None:
    scenario(License, "lic-1").given_state(version=5, buyer_id="ada", allowed_uses=1, used=1).when(
        lambda lic: lic.report_usage(1)
    ).then(UsageReported(uses=1), UsageExceededLicense(used=2, allowed=1)).then_state(version=7)

    with pytest.raises(TypeError, match="License has no state attribute owner; it has: allowed_uses, asset_id"):
        scenario(License).given_state(owner="ada")
    with pytest.raises(TypeError, match="given\\(\\) takes domain events"):
        scenario(License).given("LicenseOffered")  # type: ignore[arg-type]


class Deposited(DomainEvent):
    amount: int


class Withdrawn(DomainEvent):
    amount: int


class Frozen(DomainEvent):
    reason: str


class Account(EventSourcedAggregate):
    balance: int = 0

    def withdraw(self, amount: int) -> None:
        if amount > self.balance:
            raise DomainError(f"Account {self.id} holds {self.balance}, cannot withdraw {amount}")
        self.record(Withdrawn(amount=amount))

    @applies
    def _deposited(self, event: Deposited) -> None:
        self.balance += event.amount

    @applies
    def _withdrawn(self, event: Withdrawn) -> None:
        self.balance -= event.amount


def test_an_event_sourced_aggregate_is_rebuilt_from_the_given_events() -> None:
    account = scenario(Account, "acc-1").given(Deposited(amount=10), Deposited(amount=5), Withdrawn(amount=3))
    account.when(lambda acc: acc.withdraw(12)).then(Withdrawn(amount=12)).then_state(balance=0, version=4)
    account.when(lambda acc: acc.withdraw(13)).then_raises(DomainError, match="holds 12, cannot withdraw 13")

    # An event the aggregate cannot apply is a mistake in the test, reported by the aggregate itself
    with pytest.raises(TypeError, match="no @applies method for Frozen"):
        scenario(Account).given(Frozen(reason="x")).when(lambda acc: None)


def test_first_difference_is_none_for_equal_lists() -> None:
    # The diff helper is shared with the saga kit; its "no difference" answer must be exact
    assert first_difference([UsageReported(uses=1)], [UsageReported(uses=1)]) is None
    assert first_difference([], [UsageReported(uses=1)]) is not None


# -- the harness ------------------------------------------------------------------------------------


async def test_the_harness_runs_the_quickstart_and_sees_its_publications() -> None:
    async with await Harness.open(build) as h:
        # Given an offered license / when it is purchased
        await h.handle(OfferLicense(license_id="lic-1", asset_id="asset-1", price_cents=1500, allowed_uses=2))
        await h.handle(PurchaseLicense(license_id="lic-1", buyer_id="ada"))

        # Then the journal holds both domain events and the outbox the public contract, decoded
        assert await h.events() == [OFFERED, PURCHASED]
        assert await h.published() == [LicensePurchaseConfirmed(license_id="lic-1", buyer_id="ada", price_cents=1500)]
        confirmed = await h.assert_published(LicensePurchaseConfirmed, license_id="lic-1", price_cents=1500)
        assert confirmed.buyer_id == "ada"

        # When usage goes past the allowance, after clear(): only the new facts are shown
        await h.clear()
        assert await h.events() == [] and await h.published() == []
        await h.handle(ReportUsage(license_id="lic-1", uses=3))
        assert await h.events() == [UsageReported(uses=3), UsageExceededLicense(used=3, allowed=2)]
        assert await h.published("licensing.UsageViolationDetected") == [
            UsageViolationDetected(license_id="lic-1", used=3, allowed=2)
        ]
        assert await h.published("licensing.LicensePurchaseConfirmed") == []


async def test_a_refused_command_leaves_nothing_in_the_harness() -> None:
    async with await Harness.open(build) as h:
        await h.handle(OfferLicense(license_id="lic-1", asset_id="asset-1", price_cents=1500, allowed_uses=2))
        await h.handle(PurchaseLicense(license_id="lic-1", buyer_id="ada"))
        await h.clear()

        with pytest.raises(DomainError, match="already purchased"):
            await h.handle(PurchaseLicense(license_id="lic-1", buyer_id="bob"))

        assert await h.events() == []
        assert await h.published() == []
        assert (await h.app.load(License, "lic-1")).buyer_id == "ada"


async def test_assert_published_fails_naming_the_nearest_miss() -> None:
    async with await Harness.open(build) as h:
        await h.handle(OfferLicense(license_id="lic-1", asset_id="asset-1", price_cents=1500, allowed_uses=2))
        await h.handle(PurchaseLicense(license_id="lic-1", buyer_id="ada"))

        with pytest.raises(AssertionError) as failure:
            await h.assert_published(LicensePurchaseConfirmed, license_id="lic-1", price_cents=1600)
        message = str(failure.value)
        assert message.startswith("no LicensePurchaseConfirmed(license_id='lic-1', price_cents=1600) was published\n")
        published = "  1. [licensing.LicensePurchaseConfirmed] LicensePurchaseConfirmed(license_id='lic-1', buyer_id='ada'"
        assert published in message
        assert "  price_cents: expected 1600, published 1500" in message

        with pytest.raises(AssertionError, match="^no UsageViolationDetected was published"):
            await h.assert_published(UsageViolationDetected)
        with pytest.raises(TypeError, match="has no field buyer; it has: license_id, buyer_id, price_cents"):
            await h.assert_published(LicensePurchaseConfirmed, buyer="ada")


async def test_the_tidings_harness_fixture_opens_harnesses_and_closes_them(tidings_harness: HarnessFactory) -> None:
    # The plugin is installed with the package, so this module uses its fixture without importing it
    h = await tidings_harness(build)
    await h.handle(OfferLicense(license_id="lic-1", asset_id="asset-1", price_cents=1500, allowed_uses=2))
    assert await h.events() == [OFFERED]
    assert h.store.url == "sqlite:///:memory:"


# -- the pytest plugin, run as a user would -----------------------------------------------------------

USER_TESTS = '''
import pytest
from examples.quickstart.application import build
from examples.quickstart.domain import OfferLicense
from tidings.app import Application


@pytest.mark.asyncio
async def test_sqlite(tidings_sqlite_store, tmp_path):
    assert tidings_sqlite_store.url.startswith(f"sqlite:///{tmp_path}")
    assert await tidings_sqlite_store.count("journal") == 0
    await build(tidings_sqlite_store).handle(OfferLicense(license_id="l", asset_id="a", price_cents=1, allowed_uses=1))
    assert await tidings_sqlite_store.count("journal") == 1


@pytest.mark.asyncio
async def test_postgres(tidings_postgres_store):
    with open({schema_file!r}, "w") as f:
        f.write(tidings_postgres_store.schema)
    assert await tidings_postgres_store.count("journal") == 0
    await build(tidings_postgres_store).handle(OfferLicense(license_id="l", asset_id="a", price_cents=1, allowed_uses=1))
    assert await tidings_postgres_store.count("outbox") == 0
    assert await tidings_postgres_store.count("aggregate_state") == 1


@pytest.mark.asyncio
async def test_harness_on_the_postgres_store(tidings_harness, tidings_postgres_store):
    h = await tidings_harness(build, store=tidings_postgres_store)
    await h.handle(OfferLicense(license_id="l", asset_id="a", price_cents=1, allowed_uses=1))
    assert [type(e).__name__ for e in await h.events()] == ["LicenseOffered"]


@pytest.mark.asyncio
async def test_a_wrong_expectation_fails(tidings_sqlite_store):
    assert await tidings_sqlite_store.count("journal") == 1
'''


def _user_project(pytester: pytest.Pytester, schema_file: Path) -> None:
    pytester.makepyfile(test_user=USER_TESTS.replace("{schema_file!r}", repr(str(schema_file))))
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    # The user's project must find the examples package as this repository's tests do.
    pytester.syspathinsert(Path(__file__).resolve().parents[1])


def _schema_exists(schema: str) -> bool:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is not None


def test_the_plugin_fixtures_work_in_a_users_strict_mode_project(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    monkeypatch.setenv("TIDINGS_TEST_POSTGRES_URL", POSTGRES_URL)
    schema_file = tmp_path / f"schema-{uuid.uuid4().hex}"
    _user_project(pytester, schema_file)

    # When a user's suite (pytest-asyncio in strict mode, the plugin from the entry point) runs
    result = pytester.runpytest("-p", "no:cacheprovider", "-q")

    # Then the fixtures serve real stores, and a wrong expectation still fails
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*test_a_wrong_expectation_fails*assert 0 == 1*"])
    # And the PostgreSQL schema the test ran in is gone afterwards
    schema = schema_file.read_text()
    assert schema.startswith("tidings_test_")
    assert not _schema_exists(schema)


def test_the_postgres_fixture_skips_with_the_reason_when_the_server_is_unreachable(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given a URL where nothing listens (port 1), outside CI
    monkeypatch.setenv("TIDINGS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:1/test")
    monkeypatch.delenv("CI", raising=False)
    _user_project(pytester, tmp_path / "unused")

    result = pytester.runpytest("-p", "no:cacheprovider", "-rs", "-k", "test_postgres")

    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        ["*SKIPPED*PostgreSQL is not reachable at postgresql://postgres@127.0.0.1:1/test*under CI=true this test fails instead*"]
    )


def test_the_postgres_fixture_fails_under_ci_when_the_server_is_unreachable(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given the same unreachable server, under CI=true: a missing server must not turn green
    monkeypatch.setenv("TIDINGS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:1/test")
    monkeypatch.setenv("CI", "true")
    _user_project(pytester, tmp_path / "unused")

    result = pytester.runpytest("-p", "no:cacheprovider", "-k", "test_postgres")

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*CI=true and PostgreSQL is not reachable at postgresql://postgres@127.0.0.1:1/test*"])
