"""Domain events of Compliance: infringements detected, reviews requested, investigations closed."""

from __future__ import annotations

from typing import Annotated

from tidings.domain import DomainEvent, Personal

__all__ = ["BuyerId", "InfringementDetected", "ReviewRequested", "InvestigationClosed"]

#: The accused buyer's id is personal data of that buyer: sealed with their key, masked once forgotten.
BuyerId = Annotated[str, Personal(subject="buyer_id")]


class InfringementDetected(DomainEvent, name="compliance.InfringementDetected"):
    """A license was used past its allowance; the first one opens the investigation, later ones add to it."""

    license_id: str
    asset_id: str
    buyer_id: BuyerId
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
