"""Specification of Licensing's domain: searchable assets are offered, a license is sold once, usage is counted.

Given–when–then on the plain aggregates: history is replayed, a method is called, and what it
recorded is taken with ``take_pending``. No database, no application.
"""

from __future__ import annotations

import dataclasses

import pytest

from examples.licensing.licensing.domain import (
    MAX_USES_PER_REPORT,
    LicensableAsset,
    LicensableAssetRegistered,
    License,
    LicenseOffered,
    LicensePurchased,
    OfferLicense,
    PurchaseLicense,
    RegisterLicensableAsset,
    ReportUsage,
    UsageExceededLicense,
    UsageReported,
    license_id_for,
)
from tidings.domain import Command, DomainError, DomainEvent, StateStoredAggregate, ValidationError
from tidings.messaging import StateCodec

ASSET_ID = "asset-7"
OWNER = "ada"
BUYER = "bob"
LICENSE_ID = license_id_for(ASSET_ID, BUYER)

REGISTERED = LicensableAssetRegistered(owner_id=OWNER, title="Harbour at dawn", media_type="image/jpeg")
OFFERED = LicenseOffered(asset_id=ASSET_ID, buyer_id=BUYER, price_cents=4_900, currency="EUR", allowed_uses=3)
PURCHASED = LicensePurchased(asset_id=ASSET_ID, buyer_id=BUYER, price_cents=4_900, currency="EUR")


def used(uses: int, total: int) -> UsageReported:
    """The UsageReported event of a report of ``uses`` that brought the total to ``total``."""
    return UsageReported(asset_id=ASSET_ID, buyer_id=BUYER, uses=uses, used=total, allowed=3)


def exceeded(total: int) -> UsageExceededLicense:
    """The UsageExceededLicense event of a total of ``total`` against an allowance of 3."""
    return UsageExceededLicense(asset_id=ASSET_ID, buyer_id=BUYER, used=total, allowed=3)


def given_license(*history: DomainEvent, license_id: str = LICENSE_ID) -> License:
    """A license rebuilt from ``history``."""
    license = License(license_id)
    license.replay(history)
    return license


def given_asset(*history: DomainEvent) -> LicensableAsset:
    """A licensable asset rebuilt from ``history``."""
    asset = LicensableAsset(ASSET_ID)
    asset.replay(history)
    return asset


def recorded(aggregate: License | LicensableAsset) -> list[DomainEvent]:
    """The events the last calls recorded, in order."""
    return [event for _, event in aggregate.take_pending()]


# -- licensable assets ---------------------------------------------------------------------------


def test_registering_a_searchable_asset_records_it() -> None:
    # Given an asset Licensing has not heard of
    asset = given_asset()

    # When the ACL registers it from AssetReadyForSearch
    asset.register(owner_id=OWNER, title="Harbour at dawn", media_type="image/jpeg")

    # Then it is registered
    assert recorded(asset) == [REGISTERED]
    assert (asset.registered, asset.owner_id) == (True, OWNER)


def test_registering_an_asset_again_records_nothing() -> None:
    # Given a registered asset / when the contract is delivered again / then nothing changes
    asset = given_asset(REGISTERED)
    asset.register(owner_id=OWNER, title="Harbour at dawn", media_type="image/jpeg")
    assert recorded(asset) == []
    assert asset.version == 1


def test_offering_a_registered_asset_records_the_offer_on_the_buyers_license() -> None:
    # Given a registered asset and a fresh license for it and bob
    asset = given_asset(REGISTERED)
    license = given_license()

    # When the asset is offered to bob
    asset.offer_license(license, buyer_id=BUYER, price_cents=4_900, allowed_uses=3)

    # Then the license records the offer; the asset itself records nothing
    assert recorded(license) == [OFFERED]
    assert (license.offered, license.sold, license.allowed_uses, license.used) == (True, False, 3, 0)
    assert recorded(asset) == []


def test_an_asset_that_is_not_searchable_cannot_be_offered() -> None:
    # Given an asset Licensing was never told is searchable
    asset, license = given_asset(), given_license()

    # When it is offered / then it is refused with the rule, and the license records nothing
    with pytest.raises(DomainError, match=f"Asset {ASSET_ID} is not searchable yet; only searchable assets"):
        asset.offer_license(license, buyer_id=BUYER, price_cents=4_900, allowed_uses=3)
    assert recorded(license) == []


def test_an_owner_cannot_be_offered_their_own_asset() -> None:
    # Given a registered asset / when it is offered to its owner / then it is refused
    asset, license = given_asset(REGISTERED), given_license(license_id=license_id_for(ASSET_ID, OWNER))
    with pytest.raises(DomainError, match="belongs to ada; an owner does not buy a license to their own asset"):
        asset.offer_license(license, buyer_id=OWNER, price_cents=4_900, allowed_uses=3)
    assert recorded(license) == []


# -- offer ---------------------------------------------------------------------------------------


def test_offering_a_license_twice_is_refused() -> None:
    # Given a registered asset already offered to bob
    asset, license = given_asset(REGISTERED), given_license(OFFERED)

    # When it is offered to bob again / then it is refused and the first offer stands
    with pytest.raises(DomainError, match="already offered to bob for 4900 cents \\(EUR\\)"):
        asset.offer_license(license, buyer_id=BUYER, price_cents=100, allowed_uses=99)
    assert recorded(license) == []
    assert (license.price_cents, license.allowed_uses) == (4_900, 3)


def test_license_id_is_one_per_asset_and_buyer() -> None:
    # Given assets and buyers / then the id repeats for one pair and differs otherwise
    assert license_id_for(ASSET_ID, BUYER) == LICENSE_ID
    assert license_id_for(ASSET_ID, "carol") != LICENSE_ID
    assert license_id_for("asset-8", BUYER) != LICENSE_ID
    assert license_id_for("a", "b:c") != license_id_for("a:b", "c")
    assert OfferLicense(asset_id=ASSET_ID, buyer_id=BUYER, price_cents=1, allowed_uses=1).license_id == LICENSE_ID


def test_offer_into_a_license_whose_id_is_not_derived_is_a_programming_error() -> None:
    # Given a license with a made-up id / when an offer is recorded on it / then it is refused
    license = given_license(license_id="lic-1")
    with pytest.raises(ValueError, match=f"license_id_for\\(asset_id, buyer_id\\) = {LICENSE_ID}"):
        license.offer(asset_id=ASSET_ID, buyer_id=BUYER, price_cents=4_900, allowed_uses=3)
    assert recorded(license) == []


# -- purchase ------------------------------------------------------------------------------------


def test_purchase_of_an_offered_license_records_license_purchased() -> None:
    # Given an offered license
    license = given_license(OFFERED)

    # When the buyer purchases it
    license.purchase(buyer_id=BUYER)

    # Then the purchase is recorded with what the public contract needs, and the license is sold
    assert recorded(license) == [PURCHASED]
    assert license.sold


def test_second_purchase_is_refused() -> None:
    # Given a purchased license
    license = given_license(OFFERED, PURCHASED)

    # When the buyer purchases it again
    with pytest.raises(DomainError) as refused:
        license.purchase(buyer_id=BUYER)

    # Then it is refused, naming the license and its buyer, and nothing is recorded
    assert str(refused.value) == f"License {LICENSE_ID} was already purchased by bob; a license is sold once"
    assert recorded(license) == []
    assert license.version == 2


def test_purchase_by_someone_the_license_was_not_offered_to_is_refused() -> None:
    # Given a license offered to bob / when carol purchases it / then it is refused
    license = given_license(OFFERED)
    with pytest.raises(DomainError, match="was offered to bob, not to carol"):
        license.purchase(buyer_id="carol")
    assert recorded(license) == []
    assert not license.sold


def test_purchase_of_a_license_never_offered_is_refused() -> None:
    # Given a fresh license / when it is purchased / then it is refused
    license = given_license()
    with pytest.raises(DomainError, match="has not been offered; it can only be purchased after an offer"):
        license.purchase(buyer_id=BUYER)
    assert recorded(license) == []


# -- usage ---------------------------------------------------------------------------------------


def test_usage_before_purchase_is_refused() -> None:
    # Given an offered license not yet bought
    license = given_license(OFFERED)

    # When usage is reported / then it is refused and not counted
    with pytest.raises(DomainError, match="is not purchased yet; usage can only be reported after the purchase"):
        license.report_usage(uses=1)
    assert recorded(license) == []
    assert license.used == 0


def test_usage_within_the_allowance_is_counted() -> None:
    # Given a purchased license allowing 3 uses
    license = given_license(OFFERED, PURCHASED)

    # When 1 and then 2 uses are reported
    license.report_usage(uses=1)
    license.report_usage(uses=2)

    # Then both are counted and no excess is recorded (3 of 3 is within the allowance)
    assert recorded(license) == [used(1, 1), used(2, 3)]
    assert license.used == 3


def test_usage_passing_the_allowance_records_usage_exceeded_as_well_as_the_report() -> None:
    # Given a purchased license with 2 of 3 uses spent
    license = given_license(OFFERED, PURCHASED, used(2, 2))

    # When 2 more uses are reported
    license.report_usage(uses=2)

    # Then the report is counted and the excess recorded after it
    assert recorded(license) == [used(2, 4), exceeded(4)]
    assert license.used == 4


def test_every_report_past_the_allowance_is_recorded_as_exceeding_it() -> None:
    # Given a license already past its allowance
    license = given_license(OFFERED, PURCHASED, used(4, 4), exceeded(4))

    # When one more use is reported / then it is another violation, with the new total
    license.report_usage(uses=1)
    assert recorded(license) == [used(1, 5), exceeded(5)]


def test_non_positive_usage_is_refused_so_the_count_never_goes_down() -> None:
    # Given a purchased license with 2 uses / when -1 uses are reported directly / then it is refused
    license = given_license(OFFERED, PURCHASED, used(2, 2))
    with pytest.raises(ValueError, match="uses must be at least 1, got -1"):
        license.report_usage(uses=-1)
    assert license.used == 2
    assert recorded(license) == []


# -- persistence style ---------------------------------------------------------------------------


def test_license_state_round_trips_through_the_state_codec() -> None:
    # Given a license that is state-stored, bought and used
    assert issubclass(License, StateStoredAggregate) and issubclass(LicensableAsset, StateStoredAggregate)
    license = given_license(OFFERED, PURCHASED, used(4, 4))

    # When its state is encoded as a row and decoded again
    codec = StateCodec(License)
    restored = License.restore(license.id, license.version, codec.decode(codec.encode(license.state())))

    # Then the restored license is the same and still refuses a second purchase
    assert restored.state() == license.state()
    with pytest.raises(DomainError, match="already purchased"):
        restored.purchase(buyer_id=BUYER)


def test_recorded_state_equals_replayed_state() -> None:
    # Given a license driven through its life by its methods
    live = given_license()
    given_asset(REGISTERED).offer_license(live, buyer_id=BUYER, price_cents=4_900, allowed_uses=3)
    live.purchase(buyer_id=BUYER)
    live.report_usage(uses=4)
    history = recorded(live)

    # When another instance replays the recorded events / then it has the same state and version
    rebuilt = given_license(*history)
    assert history == [OFFERED, PURCHASED, used(4, 4), exceeded(4)]
    assert (rebuilt.state(), rebuilt.version) == (live.state(), live.version)


# -- commands ------------------------------------------------------------------------------------

VALID_OFFER = OfferLicense(asset_id=ASSET_ID, buyer_id=BUYER, price_cents=4_900, allowed_uses=3)


def test_valid_commands_pass_validation() -> None:
    # Given commands with acceptable values / when validated / then nothing is raised
    for command in (
        VALID_OFFER,
        dataclasses.replace(VALID_OFFER, currency="USD"),
        RegisterLicensableAsset(asset_id=ASSET_ID, owner_id=OWNER, title="Harbour", media_type="image/jpeg"),
        PurchaseLicense(license_id=LICENSE_ID, buyer_id=BUYER),
        ReportUsage(license_id=LICENSE_ID, uses=1),
        ReportUsage(license_id=LICENSE_ID, uses=MAX_USES_PER_REPORT),
    ):
        command.validate()


@pytest.mark.parametrize(
    ("command", "field", "reason"),
    [
        pytest.param(dataclasses.replace(VALID_OFFER, asset_id=""), "asset_id", "must not be blank", id="offer-asset"),
        pytest.param(dataclasses.replace(VALID_OFFER, buyer_id=" "), "buyer_id", "must not be blank", id="offer-buyer"),
        pytest.param(dataclasses.replace(VALID_OFFER, price_cents=0), "price_cents", "must be positive", id="free"),
        pytest.param(dataclasses.replace(VALID_OFFER, price_cents=-1), "price_cents", "must be positive", id="neg-pr"),
        pytest.param(dataclasses.replace(VALID_OFFER, allowed_uses=0), "allowed_uses", "at least 1", id="no-uses"),
        pytest.param(dataclasses.replace(VALID_OFFER, currency="eur"), "currency", "ISO 4217", id="lower-currency"),
        pytest.param(dataclasses.replace(VALID_OFFER, currency="EURO"), "currency", "ISO 4217", id="long-currency"),
        pytest.param(PurchaseLicense(license_id="", buyer_id=BUYER), "license_id", "blank", id="purchase-license"),
        pytest.param(PurchaseLicense(license_id=LICENSE_ID, buyer_id=""), "buyer_id", "blank", id="purchase-buyer"),
        pytest.param(ReportUsage(license_id=LICENSE_ID, uses=0), "uses", "at least 1, got 0", id="zero-uses"),
        pytest.param(ReportUsage(license_id=LICENSE_ID, uses=-3), "uses", "at least 1, got -3", id="negative-uses"),
        pytest.param(
            ReportUsage(license_id=LICENSE_ID, uses=MAX_USES_PER_REPORT + 1), "uses", "at most", id="absurd-uses"
        ),
        pytest.param(ReportUsage(license_id=" ", uses=1), "license_id", "blank", id="usage-license"),
        pytest.param(
            RegisterLicensableAsset(asset_id=ASSET_ID, owner_id=OWNER, title="", media_type="image/jpeg"),
            "title",
            "blank",
            id="register-title",
        ),
    ],
)
def test_command_with_a_bad_field_is_refused_naming_the_field(command: Command, field: str, reason: str) -> None:
    # Given a command with one unacceptable value / when validated / then the error names command and field
    with pytest.raises(ValidationError) as refused:
        command.validate()
    assert (refused.value.field, refused.value.message_type) == (field, type(command).__name__)
    assert reason in str(refused.value)
