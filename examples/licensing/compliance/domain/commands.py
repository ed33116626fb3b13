"""Commands of Compliance, each checking the values of its own fields."""

from __future__ import annotations

from examples.licensing.compliance.domain.identity import investigation_id_for
from examples.licensing.compliance.domain.status import Outcome
from tidings.domain import Command, ValidationError

__all__ = ["MAX_TEXT_LENGTH", "OpenInvestigation", "RequestReview", "CloseInvestigation"]

#: Longest free text (note, reason) a command carries; evidence documents belong elsewhere.
MAX_TEXT_LENGTH = 2000


def _invalid(command: Command, field: str, reason: str) -> ValidationError:
    return ValidationError(reason, field=field, message_type=type(command).__name__)


def _require_text(command: Command, field: str, value: str) -> None:
    if not value.strip():
        raise _invalid(command, field, "must not be blank")
    if len(value) > MAX_TEXT_LENGTH:
        raise _invalid(command, field, f"must be at most {MAX_TEXT_LENGTH} characters, got {len(value)}")


class OpenInvestigation(Command, name="compliance.OpenInvestigation"):
    """Open the investigation of a license used past its allowance, or add this infringement to it."""

    license_id: str
    asset_id: str
    buyer_id: str
    used: int
    allowed: int
    source: str

    @property
    def investigation_id(self) -> str:
        """The id of the license's investigation (the same for every infringement of that license)."""
        return investigation_id_for(self.license_id)

    def validate(self) -> None:
        """Refuse blank ids or source, negative counts, or usage that does not exceed the allowance."""
        for field in ("license_id", "asset_id", "buyer_id", "source"):
            _require_text(self, field, getattr(self, field))
        if self.allowed < 0:
            raise _invalid(self, "allowed", f"must not be negative, got {self.allowed}")
        # Usage within the allowance is no infringement; "allowed" 0 covers use without any license.
        if self.used <= self.allowed:
            raise _invalid(self, "used", f"must exceed allowed ({self.allowed}) to be an infringement, got {self.used}")


class RequestReview(Command, name="compliance.RequestReview"):
    """Ask a reviewer to judge an open investigation."""

    investigation_id: str
    reviewer: str
    note: str = ""

    def validate(self) -> None:
        """Refuse a blank investigation id or reviewer, or an over-long note."""
        _require_text(self, "investigation_id", self.investigation_id)
        _require_text(self, "reviewer", self.reviewer)
        if len(self.note) > MAX_TEXT_LENGTH:
            raise _invalid(self, "note", f"must be at most {MAX_TEXT_LENGTH} characters, got {len(self.note)}")


class CloseInvestigation(Command, name="compliance.CloseInvestigation"):
    """Close an investigation with an outcome (confirmed, settled, dismissed) and a reason."""

    investigation_id: str
    outcome: str
    reason: str

    def validate(self) -> None:
        """Refuse a blank investigation id or reason, or an outcome that is not one of ``Outcome``."""
        _require_text(self, "investigation_id", self.investigation_id)
        if self.outcome not in {outcome.value for outcome in Outcome}:
            choices = ", ".join(outcome.value for outcome in Outcome)
            raise _invalid(self, "outcome", f"must be one of {choices}; got {self.outcome!r}")
        _require_text(self, "reason", self.reason)
