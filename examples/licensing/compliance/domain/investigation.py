"""The Investigation aggregate: the case file of one license's infringements, from detection to closing."""

from __future__ import annotations

from examples.licensing.compliance.domain.events import BuyerId, InfringementDetected, InvestigationClosed, ReviewRequested
from examples.licensing.compliance.domain.identity import investigation_id_for
from examples.licensing.compliance.domain.status import InvestigationStatus, Outcome
from tidings.domain import DomainError, EventSourcedAggregate, applies

__all__ = ["Investigation"]


class Investigation(EventSourcedAggregate, name="compliance.Investigation"):
    """An investigation into one license: opened by an infringement, reviewed, closed with an outcome.

    Event-sourced: it is a case file, and its history (each infringement and its source, who was
    asked to review, why it was closed, that it was reopened) is the evidence itself, not just a
    way to reach the current status; cases are short, so replaying them is cheap.
    """

    status: InvestigationStatus = InvestigationStatus.NOT_OPENED
    license_id: str = ""
    asset_id: str = ""
    buyer_id: BuyerId = ""
    #: How many infringements this case has collected, across reopenings.
    infringements: int = 0
    #: The highest usage any report has shown, and the allowance it was measured against.
    used: int = 0
    allowed: int = 0
    reviewer: str | None = None
    outcome: Outcome | None = None

    def open(self, *, license_id: str, asset_id: str, buyer_id: str, used: int, allowed: int, source: str) -> None:
        """Record an infringement: it opens the investigation, adds evidence to an open one, or reopens a closed one."""
        expected = investigation_id_for(license_id)
        if self.id != expected:
            # A programming error: any other id would split one license's infringements over cases.
            raise ValueError(
                f"Investigation {self.id} cannot hold infringements of license {license_id}; "
                f"its id must be investigation_id_for(license_id) = {expected}"
            )
        if used <= allowed:
            # OpenInvestigation.validate refuses this first; the guard keeps direct callers honest.
            raise ValueError(f"an infringement needs used > allowed, got used={used}, allowed={allowed}")
        # No refusal for an open or closed case: the usage happened whatever the case's stage, and
        # refusing would only drop evidence (and dead-letter a valid message). Closing judged the
        # evidence known then; a new infringement after it is new evidence, so the case reopens.
        self.record(
            InfringementDetected(
                license_id=license_id, asset_id=asset_id, buyer_id=buyer_id, used=used, allowed=allowed, source=source
            )
        )

    def request_review(self, *, reviewer: str, note: str = "") -> None:
        """Ask ``reviewer`` to judge the evidence; only for an open investigation without a pending review."""
        self._refuse_unless_open("a review can only be requested")
        if self.status is InvestigationStatus.UNDER_REVIEW:
            raise DomainError(
                f"Investigation {self.id} is already waiting for a review by {self.reviewer}; "
                "close it or wait for that review"
            )
        self.record(ReviewRequested(reviewer=reviewer, note=note))

    def close(self, *, outcome: str, reason: str) -> None:
        """Close the investigation; a closed one cannot be closed again, and a confirmed infringement needs a review."""
        self._refuse_unless_open("it can only be closed")
        result = Outcome(outcome)
        # Confirming an infringement accuses a buyer, so a person must have looked at the evidence;
        # settling or dismissing does not accuse anyone and may happen straight away.
        if result is Outcome.CONFIRMED and self.status is not InvestigationStatus.UNDER_REVIEW:
            raise DomainError(
                f"Investigation {self.id} has not been reviewed; request a review before confirming the infringement"
            )
        self.record(InvestigationClosed(outcome=result.value, reason=reason))

    def _refuse_unless_open(self, what: str) -> None:
        if self.status is InvestigationStatus.NOT_OPENED:
            raise DomainError(f"Investigation {self.id} was never opened; {what} after an infringement is detected")
        if self.status is InvestigationStatus.CLOSED:
            raise DomainError(
                f"Investigation {self.id} is closed ({self.outcome}); {what} while it is open — "
                "a new infringement reopens it"
            )

    @applies
    def _infringement_detected(self, event: InfringementDetected) -> None:
        if self.status in (InvestigationStatus.NOT_OPENED, InvestigationStatus.CLOSED):
            # Opening or reopening: the previous review and outcome belong to the case as it was.
            self.status = InvestigationStatus.OPEN
            self.reviewer = None
            self.outcome = None
        self.license_id = event.license_id
        self.asset_id = event.asset_id
        self.buyer_id = event.buyer_id
        self.infringements += 1
        # Reports can arrive out of order (two sources, redeliveries): keep the worst one seen.
        if event.used >= self.used:
            self.used = event.used
            self.allowed = event.allowed

    @applies
    def _review_requested(self, event: ReviewRequested) -> None:
        self.status = InvestigationStatus.UNDER_REVIEW
        self.reviewer = event.reviewer

    @applies
    def _closed(self, event: InvestigationClosed) -> None:
        self.status = InvestigationStatus.CLOSED
        self.outcome = Outcome(event.outcome)
