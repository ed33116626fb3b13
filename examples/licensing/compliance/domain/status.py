"""Where an investigation stands, and how it can end."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["InvestigationStatus", "Outcome"]


class InvestigationStatus(StrEnum):
    """The stage of an investigation: open, waiting for a reviewer, or closed."""

    NOT_OPENED = "not_opened"
    OPEN = "open"
    UNDER_REVIEW = "under_review"
    CLOSED = "closed"


class Outcome(StrEnum):
    """How an investigation was closed."""

    #: A reviewer confirmed the infringement (only after a review was requested).
    CONFIRMED = "confirmed"
    #: The buyer paid for the extra uses.
    SETTLED = "settled"
    #: No infringement after all (a reporting error, a duplicate, a false alarm).
    DISMISSED = "dismissed"
