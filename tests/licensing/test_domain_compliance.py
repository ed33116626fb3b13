"""Specification of Compliance's domain: an infringement opens an investigation that is reviewed and closed.

Given–when–then on the plain aggregate: history is replayed, a method is called, and what it
recorded is taken with ``take_pending``. No database, no application.
"""

from __future__ import annotations

import pytest

from examples.licensing.compliance.domain import (
    CloseInvestigation,
    InfringementDetected,
    Investigation,
    InvestigationClosed,
    InvestigationStatus,
    OpenInvestigation,
    Outcome,
    RequestReview,
    ReviewRequested,
    investigation_id_for,
)
from tidings.domain import Command, DomainError, DomainEvent, EventSourcedAggregate, ValidationError

LICENSE_ID = "lic-7"
INVESTIGATION_ID = investigation_id_for(LICENSE_ID)


def detected(used: int = 4, allowed: int = 3, source: str = "licensing") -> InfringementDetected:
    """An infringement of LICENSE_ID by bob."""
    return InfringementDetected(
        license_id=LICENSE_ID, asset_id="asset-7", buyer_id="bob", used=used, allowed=allowed, source=source
    )


REVIEW = ReviewRequested(reviewer="carol", note="usage past allowance twice")
DISMISSED = InvestigationClosed(outcome="dismissed", reason="reporting error")


def given(*history: DomainEvent) -> Investigation:
    """An investigation rebuilt from ``history``."""
    investigation = Investigation(INVESTIGATION_ID)
    investigation.replay(history)
    return investigation


def recorded(investigation: Investigation) -> list[DomainEvent]:
    """The events the last calls recorded, in order."""
    return [event for _, event in investigation.take_pending()]


def report(investigation: Investigation, used: int = 4, allowed: int = 3, source: str = "licensing") -> None:
    """Report an infringement of LICENSE_ID by bob on ``investigation``."""
    investigation.open(
        license_id=LICENSE_ID, asset_id="asset-7", buyer_id="bob", used=used, allowed=allowed, source=source
    )


# -- opening -------------------------------------------------------------------------------------


def test_an_infringement_opens_the_investigation() -> None:
    # Given no investigation into the license yet
    investigation = given()

    # When an infringement is reported
    report(investigation)

    # Then InfringementDetected is recorded and the investigation is open
    assert recorded(investigation) == [detected()]
    assert investigation.status is InvestigationStatus.OPEN
    assert (investigation.license_id, investigation.infringements, investigation.used) == (LICENSE_ID, 1, 4)


def test_a_further_infringement_adds_evidence_to_the_open_investigation() -> None:
    # Given an open investigation
    investigation = given(detected(used=4))

    # When another infringement of the same license arrives from the partner feed
    report(investigation, used=6, source="legacy-partner-feed")

    # Then it is recorded on the same case, which stays open and counts both
    assert recorded(investigation) == [detected(used=6, source="legacy-partner-feed")]
    assert investigation.status is InvestigationStatus.OPEN
    assert (investigation.infringements, investigation.used) == (2, 6)


def test_an_older_report_arriving_late_does_not_lower_the_worst_usage_seen() -> None:
    # Given an investigation that has seen 6 uses of 3 / when a report of 4 arrives late / then 6 stays
    investigation = given(detected(used=6))
    report(investigation, used=4)
    assert (investigation.infringements, investigation.used, investigation.allowed) == (2, 6, 3)


def test_a_new_infringement_reopens_a_closed_investigation() -> None:
    # Given an investigation that was reviewed and dismissed
    investigation = given(detected(), REVIEW, DISMISSED)
    assert investigation.status is InvestigationStatus.CLOSED

    # When the license is used past its allowance again
    report(investigation, used=5)

    # Then the case reopens, without the old review or outcome
    assert recorded(investigation) == [detected(used=5)]
    assert investigation.status is InvestigationStatus.OPEN
    assert (investigation.reviewer, investigation.outcome, investigation.infringements) == (None, None, 2)


def test_investigation_id_is_one_per_license() -> None:
    # Given licenses / then each has one investigation id, and commands name it
    assert investigation_id_for(LICENSE_ID) == INVESTIGATION_ID
    assert investigation_id_for("lic-8") != INVESTIGATION_ID
    command = OpenInvestigation(license_id=LICENSE_ID, asset_id="a", buyer_id="b", used=2, allowed=1, source="x")
    assert command.investigation_id == INVESTIGATION_ID


def test_an_infringement_of_another_license_is_refused_by_this_investigation() -> None:
    # Given the investigation of lic-7 / when an infringement of lic-8 is recorded on it / then it is refused
    investigation = given()
    with pytest.raises(ValueError, match="cannot hold infringements of license lic-8"):
        investigation.open(license_id="lic-8", asset_id="a", buyer_id="b", used=2, allowed=1, source="licensing")
    assert recorded(investigation) == []


def test_usage_within_the_allowance_is_not_an_infringement() -> None:
    # Given no investigation / when usage within the allowance is reported directly / then it is refused
    investigation = given()
    with pytest.raises(ValueError, match="needs used > allowed, got used=3, allowed=3"):
        report(investigation, used=3, allowed=3)
    assert investigation.status is InvestigationStatus.NOT_OPENED


# -- review --------------------------------------------------------------------------------------


def test_review_of_an_open_investigation_is_requested() -> None:
    # Given an open investigation
    investigation = given(detected())

    # When a review is requested
    investigation.request_review(reviewer="carol", note="usage past allowance twice")

    # Then it is recorded and the investigation waits for carol
    assert recorded(investigation) == [REVIEW]
    assert (investigation.status, investigation.reviewer) == (InvestigationStatus.UNDER_REVIEW, "carol")


def test_review_of_a_closed_investigation_is_refused() -> None:
    # Given a closed investigation
    investigation = given(detected(), DISMISSED)

    # When a review is requested / then it is refused, saying how it could reopen
    with pytest.raises(DomainError, match="is closed \\(dismissed\\); a review can only be requested while it is open"):
        investigation.request_review(reviewer="carol")
    assert recorded(investigation) == []


def test_a_second_review_while_one_is_pending_is_refused() -> None:
    # Given an investigation waiting for carol / when dave is asked too / then it is refused
    investigation = given(detected(), REVIEW)
    with pytest.raises(DomainError, match="already waiting for a review by carol"):
        investigation.request_review(reviewer="dave")
    assert (recorded(investigation), investigation.reviewer) == ([], "carol")


def test_review_of_an_investigation_never_opened_is_refused() -> None:
    # Given no investigation / when a review is requested / then it is refused
    investigation = given()
    with pytest.raises(DomainError, match="was never opened; a review can only be requested after an infringement"):
        investigation.request_review(reviewer="carol")
    assert recorded(investigation) == []


# -- closing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", ["dismissed", "settled"])
def test_an_open_investigation_can_be_settled_or_dismissed_without_review(outcome: str) -> None:
    # Given an open investigation / when it is closed without accusing anyone
    investigation = given(detected())
    investigation.close(outcome=outcome, reason="paid for the extra uses")

    # Then the closing is recorded with its outcome
    assert recorded(investigation) == [InvestigationClosed(outcome=outcome, reason="paid for the extra uses")]
    assert (investigation.status, investigation.outcome) == (InvestigationStatus.CLOSED, Outcome(outcome))


def test_an_infringement_is_confirmed_after_a_review() -> None:
    # Given an investigation under review / when it is closed as confirmed / then it is recorded
    investigation = given(detected(), REVIEW)
    investigation.close(outcome="confirmed", reason="used on a billboard")
    assert recorded(investigation) == [InvestigationClosed(outcome="confirmed", reason="used on a billboard")]
    assert investigation.outcome is Outcome.CONFIRMED


def test_confirming_an_infringement_without_a_review_is_refused() -> None:
    # Given an open investigation nobody reviewed / when it is confirmed / then it is refused
    investigation = given(detected())
    with pytest.raises(DomainError, match="has not been reviewed; request a review before confirming"):
        investigation.close(outcome="confirmed", reason="obvious")
    assert investigation.status is InvestigationStatus.OPEN
    assert recorded(investigation) == []


def test_closing_a_closed_investigation_is_refused() -> None:
    # Given a closed investigation / when it is closed again / then it is refused and keeps its outcome
    investigation = given(detected(), DISMISSED)
    with pytest.raises(DomainError, match="is closed \\(dismissed\\); it can only be closed while it is open"):
        investigation.close(outcome="settled", reason="second thoughts")
    assert (recorded(investigation), investigation.outcome) == ([], Outcome.DISMISSED)


def test_closing_an_investigation_never_opened_is_refused() -> None:
    # Given no investigation / when it is closed / then it is refused
    investigation = given()
    with pytest.raises(DomainError, match="was never opened"):
        investigation.close(outcome="dismissed", reason="nothing to see")
    assert recorded(investigation) == []


# -- history -------------------------------------------------------------------------------------


def test_recorded_state_equals_replayed_state() -> None:
    # Given an investigation taken through open → review → close → reopen by its methods
    live = given()
    report(live)
    live.request_review(reviewer="carol", note="usage past allowance twice")
    live.close(outcome="dismissed", reason="reporting error")
    report(live, used=7, source="legacy-partner-feed")
    history = recorded(live)

    # When another instance replays the recorded events / then it has the same state and version
    rebuilt = given(*history)
    assert history == [detected(), REVIEW, DISMISSED, detected(used=7, source="legacy-partner-feed")]
    assert (rebuilt.state(), rebuilt.version) == (live.state(), live.version)
    assert issubclass(Investigation, EventSourcedAggregate)
    assert set(Investigation.appliers()) == {InfringementDetected, ReviewRequested, InvestigationClosed}


# -- commands ------------------------------------------------------------------------------------

VALID_OPEN = OpenInvestigation(
    license_id=LICENSE_ID, asset_id="asset-7", buyer_id="bob", used=4, allowed=3, source="licensing"
)


def test_valid_commands_pass_validation() -> None:
    # Given commands with acceptable values (allowed 0: use without any license) / then nothing is raised
    for command in (
        VALID_OPEN,
        OpenInvestigation(license_id=LICENSE_ID, asset_id="a", buyer_id="b", used=1, allowed=0, source="partner"),
        RequestReview(investigation_id=INVESTIGATION_ID, reviewer="carol"),
        *(CloseInvestigation(investigation_id=INVESTIGATION_ID, outcome=o.value, reason="why") for o in Outcome),
    ):
        command.validate()


@pytest.mark.parametrize(
    ("command", "field", "reason"),
    [
        pytest.param(
            OpenInvestigation(license_id="", asset_id="a", buyer_id="b", used=4, allowed=3, source="licensing"),
            "license_id",
            "must not be blank",
            id="open-license",
        ),
        pytest.param(
            OpenInvestigation(license_id="l", asset_id="a", buyer_id=" ", used=4, allowed=3, source="licensing"),
            "buyer_id",
            "must not be blank",
            id="open-buyer",
        ),
        pytest.param(
            OpenInvestigation(license_id="l", asset_id="a", buyer_id="b", used=4, allowed=3, source=""),
            "source",
            "must not be blank",
            id="open-source",
        ),
        pytest.param(
            OpenInvestigation(license_id="l", asset_id="a", buyer_id="b", used=3, allowed=3, source="licensing"),
            "used",
            "must exceed allowed (3) to be an infringement, got 3",
            id="within-allowance",
        ),
        pytest.param(
            OpenInvestigation(license_id="l", asset_id="a", buyer_id="b", used=4, allowed=-1, source="licensing"),
            "allowed",
            "must not be negative",
            id="negative-allowance",
        ),
        pytest.param(RequestReview(investigation_id="i", reviewer=""), "reviewer", "must not be blank", id="reviewer"),
        pytest.param(
            RequestReview(investigation_id="i", reviewer="carol", note="x" * 2001),
            "note",
            "at most 2000",
            id="long-note",
        ),
        pytest.param(
            CloseInvestigation(investigation_id="i", outcome="guilty", reason="why"),
            "outcome",
            "must be one of confirmed, settled, dismissed; got 'guilty'",
            id="unknown-outcome",
        ),
        pytest.param(
            CloseInvestigation(investigation_id="i", outcome="dismissed", reason=" "), "reason", "blank", id="no-reason"
        ),
        pytest.param(
            CloseInvestigation(investigation_id="", outcome="dismissed", reason="r"),
            "investigation_id",
            "blank",
            id="blank-id",
        ),
    ],
)
def test_command_with_a_bad_field_is_refused_naming_the_field(command: Command, field: str, reason: str) -> None:
    # Given a command with one unacceptable value / when validated / then the error names command and field
    with pytest.raises(ValidationError) as refused:
        command.validate()
    assert (refused.value.field, refused.value.message_type) == (field, type(command).__name__)
    assert reason in str(refused.value)
