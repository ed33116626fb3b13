"""Domain events of Compliance: infringements detected, reviews requested, investigations closed."""

from __future__ import annotations

from tidings.domain import DomainEvent

__all__ = ["InfringementDetected", "ReviewRequested", "InvestigationClosed"]


class InfringementDetected(DomainEvent, name="compliance.InfringementDetected"):
    """A license was used past its allowance; the first one opens the investigation, later ones add to it."""

    license_id: str
    asset_id: str
    buyer_id: str
    used: int
    allowed: int
    #: Who reported it: "licensing", or the partner feed the ACL translated it from.
    source: str


class ReviewRequested(DomainEvent, name="compliance.ReviewRequested"):
    """A reviewer was asked to judge the evidence of an open investigation."""

    reviewer: str
    note: str = ""


class InvestigationClosed(DomainEvent, name="compliance.InvestigationClosed"):
    """The investigation ended with an outcome (an ``Outcome`` value) and a reason."""

    outcome: str
    reason: str
