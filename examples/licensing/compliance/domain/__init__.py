"""The pure domain of Compliance: the Investigation aggregate, its commands, events, states and identity."""

from examples.licensing.compliance.domain.commands import (
    MAX_TEXT_LENGTH,
    CloseInvestigation,
    OpenInvestigation,
    RequestReview,
)
from examples.licensing.compliance.domain.events import InfringementDetected, InvestigationClosed, ReviewRequested
from examples.licensing.compliance.domain.identity import INVESTIGATION_NAMESPACE, investigation_id_for
from examples.licensing.compliance.domain.investigation import Investigation
from examples.licensing.compliance.domain.status import InvestigationStatus, Outcome

__all__ = [
    "INVESTIGATION_NAMESPACE",
    "MAX_TEXT_LENGTH",
    "CloseInvestigation",
    "InfringementDetected",
    "Investigation",
    "InvestigationClosed",
    "InvestigationStatus",
    "OpenInvestigation",
    "Outcome",
    "RequestReview",
    "ReviewRequested",
    "investigation_id_for",
]
