"""Compliance's HTTP endpoints: review and close investigations, read one, list the alerts, take a partner batch.

Request bodies are checked for shape by pydantic; values by the command's own ``validate()``, whose
ValidationError names the field. The composition root maps errors (ValidationError → 422,
DomainError and ConcurrencyError → 409, AggregateNotFound → 404) and sets
``request.state.correlation_id`` from ``X-Correlation-ID``; every command and partner record of a
request carries that correlation id.

``POST /partner-feed?partner=NAME`` takes a JSON array of records, or NDJSON (one record a line).
Every element or line goes onto the feed as it is, objects or not: judging records is the ACL's
job, and a record it cannot understand becomes a dead letter with its reason — nothing accepted is
lost. Only a request that cannot be split into records is refused (422), and then nothing of it
was accepted.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from pydantic import BaseModel, Field

from examples.licensing.compliance.application import PARTNER_NAME_PATTERN
from examples.licensing.compliance.domain import CloseInvestigation, Investigation, Outcome, RequestReview
from examples.licensing.compliance.domain.commands import MAX_TEXT_LENGTH
from examples.licensing.compliance.infrastructure.alerts import Alert
from examples.licensing.compliance.infrastructure.gateway import MAX_BATCH_RECORDS, submit_partner_batch
from tidings.app import Application
from tidings.brokers import Broker, BrokerUnavailable
from examples.licensing.web import LINE, PARAGRAPH, RequestBody, command_context, error_responses
from tidings.domain import Command, ValidationError

if TYPE_CHECKING:
    from examples.licensing.kernel import ContextParts

__all__ = [
    "AlertView",
    "CloseRequest",
    "InvestigationView",
    "PartnerFeedReceipt",
    "ReviewRequest",
    "router",
]


#: Longest id a request may carry (investigation, reviewer).
MAX_ID_LENGTH = 200
InvestigationId = Annotated[str, Path(pattern=LINE, max_length=MAX_ID_LENGTH)]
OutcomeName = Literal[tuple(outcome.value for outcome in Outcome)]  # type: ignore[valid-type]


class ReviewRequest(RequestBody):
    """Ask ``reviewer`` to judge an open investigation."""

    reviewer: str = Field(pattern=LINE, max_length=MAX_ID_LENGTH)
    note: str = Field("", pattern=PARAGRAPH, max_length=MAX_TEXT_LENGTH)


class CloseRequest(RequestBody):
    """Close an investigation: ``outcome`` is confirmed, settled or dismissed."""

    outcome: OutcomeName
    # Not a PARAGRAPH: the command refuses a blank reason, and LINE says so in the schema.
    reason: str = Field(pattern=LINE, max_length=MAX_TEXT_LENGTH)


class InvestigationView(BaseModel):
    """An investigation as last committed."""

    investigation_id: str
    license_id: str
    asset_id: str
    buyer_id: str
    #: open, under_review or closed.
    status: str
    infringements: int
    used: int
    allowed: int
    reviewer: str | None
    outcome: str | None
    version: int

    @classmethod
    def of(cls, investigation: Investigation) -> InvestigationView:
        """The view of ``investigation``."""
        return cls(
            investigation_id=investigation.id,
            license_id=investigation.license_id,
            asset_id=investigation.asset_id,
            buyer_id=investigation.buyer_id,
            status=investigation.status.value,
            infringements=investigation.infringements,
            used=investigation.used,
            allowed=investigation.allowed,
            reviewer=investigation.reviewer,
            outcome=investigation.outcome.value if investigation.outcome is not None else None,
            version=investigation.version,
        )


class InvestigationCommandView(BaseModel):
    """What a command did: the investigation as it is now, and the ids that trace the command."""

    investigation: InvestigationView
    command_id: str
    correlation_id: str


class AlertView(BaseModel):
    """One open investigation of the ComplianceAlertsFeed."""

    investigation_id: str
    license_id: str
    asset_id: str
    buyer_id: str
    status: str
    infringements: int
    used: int
    allowed: int
    last_source: str
    reviewer: str | None
    opened_at: datetime
    last_reported_at: datetime

    @classmethod
    def of(cls, alert: Alert) -> AlertView:
        """The view of ``alert``."""
        return cls(
            investigation_id=alert.investigation_id,
            license_id=alert.license_id,
            asset_id=alert.asset_id,
            buyer_id=alert.buyer_id,
            status=alert.status,
            infringements=alert.infringements,
            used=alert.used,
            allowed=alert.allowed,
            last_source=alert.last_source,
            reviewer=alert.reviewer,
            opened_at=alert.opened_at,
            last_reported_at=alert.last_reported_at,
        )


class PartnerFeedReceipt(BaseModel):
    """How many records of the batch were accepted onto the partner feed, and under which event ids."""

    partner: str
    accepted: int = Field(description="records put on the feed (copies of one report included)")
    distinct: int = Field(description="different messages among them (copies of one report count once)")
    event_ids: list[str]
    correlation_id: str


_PARTNER_FEED_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {"type": "array", "items": {}, "maxItems": MAX_BATCH_RECORDS},
            "example": [
                {
                    "report_id": "ACME-1001",
                    "license": "license id",
                    "client": "buyer id",
                    "units_used": "12.50",
                    "units_licensed": "10",
                    "period_end": "31/12/2024",
                }
            ],
        },
        "application/x-ndjson": {
            # Not blank: the characters are those bytes.strip() takes away, so the check and the document agree.
            "schema": {"type": "string", "pattern": "[^ \\t\\n\\r\\x0b\\x0c]", "description": "one record per line"}
        },
    },
}


#: The largest partner batch one request may carry (the other routes take at most web.MAX_BODY_BYTES);
#: the composition root's BodyLimitMiddleware enforces it.
MAX_BATCH_BYTES = 16 * 1024 * 1024


def router(parts: ContextParts) -> APIRouter:
    """Compliance's endpoints over ``parts`` (its application, the alerts query and the partner-feed consumer)."""
    app = parts.application
    alerts = parts.extras["alerts"]
    feed_consumer = parts.extras.get("partner_feed_consumer")
    api = APIRouter(tags=["compliance"])

    @api.post(
        "/investigations/{investigation_id}/review",
        response_model=InvestigationCommandView,
        summary="Ask a reviewer to judge an open investigation",
        responses=error_responses(400, 404, 409, 413),
    )
    async def request_review(investigation_id: InvestigationId, body: ReviewRequest, request: Request) -> InvestigationCommandView:
        """Request a review; 409 if the investigation is closed or already waiting for a review, 404 if unknown."""
        command = RequestReview(investigation_id=investigation_id, reviewer=body.reviewer, note=body.note)
        return await _run(app, command, investigation_id, request)

    @api.post(
        "/investigations/{investigation_id}/close",
        response_model=InvestigationCommandView,
        summary="Close an investigation with an outcome and a reason",
        responses=error_responses(400, 404, 409, 413),
    )
    async def close(investigation_id: InvestigationId, body: CloseRequest, request: Request) -> InvestigationCommandView:
        """Close it; 422 for an unknown outcome, 409 if closed already or confirmed without a review, 404 if unknown."""
        command = CloseInvestigation(investigation_id=investigation_id, outcome=body.outcome, reason=body.reason)
        return await _run(app, command, investigation_id, request)

    @api.get(
        "/investigations/{investigation_id}",
        response_model=InvestigationView,
        summary="One investigation",
        responses=error_responses(404),
    )
    async def get_investigation(investigation_id: InvestigationId, request: Request) -> InvestigationView:
        """The investigation as last committed; 404 if there is none with this id (for the caller's tenant)."""
        return InvestigationView.of(await app.load(Investigation, investigation_id, tenant=command_context(request).tenant))

    @api.get(
        "/alerts",
        response_model=list[AlertView],
        summary="Open investigations, newest first",
        responses=error_responses(),
    )
    async def list_alerts(request: Request, limit: int = Query(100, ge=1, le=1000)) -> list[AlertView]:
        """The ComplianceAlertsFeed read model: the caller's open investigations, newest first."""
        return [AlertView.of(alert) for alert in await alerts(limit, tenant=command_context(request).tenant)]

    @api.post(
        "/partner-feed",
        response_model=PartnerFeedReceipt,
        status_code=status.HTTP_202_ACCEPTED,
        summary="Accept a legacy partner batch (JSON array or NDJSON) for the ACL",
        openapi_extra={"requestBody": _PARTNER_FEED_BODY},
        responses=error_responses(413, 503),
    )
    async def partner_feed(
        request: Request,
        partner: str = Query(
            ..., pattern=PARTNER_NAME_PATTERN, description="the partner that sent the batch (letters, digits, _.-)"
        ),
    ) -> PartnerFeedReceipt:
        """Put every record on the feed; the ACL applies valid reports once and dead-letters the rest with reasons."""
        records = _records_of(await request.body(), request.headers.get("content-type", ""))
        broker = _broker_of(request, feed_consumer)
        try:
            receipt = await submit_partner_batch(
                broker,
                records,
                partner=partner,
                correlation_id=getattr(request.state, "correlation_id", None),
                tenant=getattr(request.state, "tenant", None),
            )
        except BrokerUnavailable as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
        return PartnerFeedReceipt(
            partner=receipt.partner,
            accepted=receipt.accepted,
            distinct=receipt.distinct,
            event_ids=list(receipt.event_ids),
            correlation_id=receipt.correlation_id,
        )

    return api


def split_records(body: bytes) -> list[bytes]:
    """The raw records of a partner batch: the elements of a JSON array, else the non-blank NDJSON lines."""
    stripped = body.strip()
    if stripped.startswith(b"["):
        try:
            elements = msgspec.json.decode(stripped)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            # Not one JSON array we can read (garbage, bytes that are not UTF-8, nesting deeper
            # than the decoder goes): read it line by line like NDJSON, for the ACL to judge.
            elements = None
        if isinstance(elements, list):
            encoder = msgspec.json.Encoder()
            # Re-encoded one by one: each element is a record as the partner sent it (objects or not).
            return [encoder.encode(element) for element in elements]
    lines = [line.strip() for line in stripped.splitlines()]
    records = [line for line in lines if line]
    if len(records) > MAX_BATCH_RECORDS:
        raise ValidationError(f"a batch carries at most {MAX_BATCH_RECORDS} records, got {len(records)}; split it", field="body")
    return records


def _records_of(body: bytes, content_type: str) -> list[bytes]:
    """The records of a request: a JSON array if it says application/json (as documented), else NDJSON lines."""
    if not body.strip():
        raise ValidationError("the request has no body; send a JSON array of records or NDJSON lines", field="body")
    if content_type.split(";")[0].strip().lower() != "application/json":
        return split_records(body)
    try:
        elements = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        reason = "nests deeper than a record can" if isinstance(exc, RecursionError) else f"is not JSON ({exc})"
        raise ValidationError(
            f"the body {reason}; send a JSON array of records, or NDJSON (application/x-ndjson) to have every "
            "line judged by the ACL",
            field="body",
        ) from None
    if not isinstance(elements, list):
        raise ValidationError(f"an application/json batch is an array of records, got a {type(elements).__name__}", field="body")
    return split_records(body)


def _broker_of(request: Request, feed_consumer: Any) -> Broker:
    # The composition root owns the broker: on the app's state (directly or on its platform), or
    # attached to the partner-feed consumer it runs.
    state = request.app.state
    broker = getattr(state, "broker", None) or getattr(getattr(state, "platform", None), "broker", None)
    broker = broker or getattr(feed_consumer, "broker", None)
    if broker is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "no broker is attached to Compliance's partner feed; the feed is closed"
        )
    return broker


async def _run(app: Application, command: Command, investigation_id: str, request: Request) -> InvestigationCommandView:
    context = command_context(request)
    result = await app.handle(command, context=context)
    investigation = (
        result.value
        if isinstance(result.value, Investigation)
        else await app.load(Investigation, investigation_id, tenant=context.tenant)
    )
    return InvestigationCommandView(
        investigation=InvestigationView.of(investigation),
        command_id=result.command_id,
        correlation_id=result.correlation_id,
    )
