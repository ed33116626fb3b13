"""Licensing's HTTP endpoints: offer, purchase and report usage of licenses, read one license and usage by day.

Request bodies are strict and bounded in their schema (``examples/licensing/web.py``) with the
same limits the command's own ``validate()`` checks, so the OpenAPI document tells the truth and
the same rules hold for HTTP, consumers and tests. The composition root maps errors to responses
(ValidationError → 422, DomainError and ConcurrencyError → 409, AggregateNotFound → 404), sets
``request.state.correlation_id`` from ``X-Correlation-ID`` and ``request.state.tenant`` from
``X-Tenant``: a caller sees and changes only its tenant's licenses.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import date
from typing import TYPE_CHECKING

from typing import Annotated

from fastapi import APIRouter, Path, Request, status
from pydantic import BaseModel, Field

from examples.licensing.licensing.domain import License, OfferLicense, PurchaseLicense, ReportUsage
from examples.licensing.licensing.domain.commands import MAX_ALLOWED_USES, MAX_PRICE_CENTS, MAX_USES_PER_REPORT
from examples.licensing.web import LINE, Integer, IsoDate, RequestBody, command_context, error_responses
from tidings.app import Application, CommandResult
from tidings.domain import Command

if TYPE_CHECKING:
    from examples.licensing.kernel import ContextParts

__all__ = [
    "DayUsageView",
    "LicenseView",
    "OfferRequest",
    "PurchaseRequest",
    "UsageRequest",
    "UsageView",
    "router",
]


#: Longest id a request may carry (asset, buyer, license).
MAX_ID_LENGTH = 200
Id = Annotated[str, Field(pattern=LINE, max_length=MAX_ID_LENGTH)]
LicenseId = Annotated[str, Path(pattern=LINE, max_length=MAX_ID_LENGTH)]


class OfferRequest(RequestBody):
    """Offer a searchable asset to a buyer."""

    asset_id: Id
    buyer_id: Id
    price_cents: Integer = Field(ge=1, le=MAX_PRICE_CENTS)
    allowed_uses: Integer = Field(ge=1, le=MAX_ALLOWED_USES)
    currency: str = Field("EUR", pattern="^[A-Z]{3}$", description="ISO 4217 code")


class PurchaseRequest(RequestBody):
    """Buy a license as the buyer it was offered to."""

    buyer_id: Id


class UsageRequest(RequestBody):
    """Report that the buyer used the asset ``uses`` more times."""

    uses: Integer = Field(ge=1, le=MAX_USES_PER_REPORT)


class LicenseView(BaseModel):
    """A license as last committed."""

    license_id: str
    asset_id: str
    buyer_id: str
    price_cents: int
    currency: str
    allowed_uses: int
    used: int
    sold: bool
    version: int

    @classmethod
    def of(cls, license: License) -> LicenseView:
        """The view of ``license``."""
        return cls(
            license_id=license.id,
            asset_id=license.asset_id,
            buyer_id=license.buyer_id,
            price_cents=license.price_cents,
            currency=license.currency,
            allowed_uses=license.allowed_uses,
            used=license.used,
            sold=license.sold,
            version=license.version,
        )


class CommandView(BaseModel):
    """What a command did: the license it changed, and the ids that trace it."""

    license: LicenseView
    command_id: str
    correlation_id: str


class UsageView(CommandView):
    """A usage report's outcome; ``exceeded`` says whether the total is now past the allowance."""

    exceeded: bool


class DayUsageView(BaseModel):
    """One UTC day of the LicenseUsageByDay read model."""

    day: date
    purchases: int
    usage_reports: int
    uses: int
    violations: int


async def _run(app: Application, command: Command, request: Request) -> tuple[License, CommandResult]:
    result = await app.handle(command, context=command_context(request))
    license = result.value
    assert isinstance(license, License), f"{type(command).__name__}'s handler returns the License it changed"
    return license, result


def router(parts: ContextParts) -> APIRouter:
    """Licensing's routes on ``parts.application``, to be mounted under ``/licensing``."""
    app = parts.application
    usage_by_day = parts.extras["usage_by_day"]
    api = APIRouter(tags=["licensing"])

    @api.post("/licenses", status_code=status.HTTP_201_CREATED, response_model=CommandView, responses=error_responses(400, 404, 409, 413))
    async def offer_license(body: OfferRequest, request: Request) -> CommandView:
        """Offer a searchable asset to a buyer; the license id is derived from asset and buyer."""
        command = OfferLicense(**body.model_dump())
        license, result = await _run(app, command, request)
        return CommandView(license=LicenseView.of(license), command_id=result.command_id, correlation_id=result.correlation_id)

    @api.post("/licenses/{license_id}/purchase", response_model=CommandView, responses=error_responses(400, 404, 409, 413))
    async def purchase_license(license_id: LicenseId, body: PurchaseRequest, request: Request) -> CommandView:
        """Buy an offered license; a second purchase is refused (409)."""
        license, result = await _run(app, PurchaseLicense(license_id=license_id, buyer_id=body.buyer_id), request)
        return CommandView(license=LicenseView.of(license), command_id=result.command_id, correlation_id=result.correlation_id)

    @api.post("/licenses/{license_id}/usage", response_model=UsageView, responses=error_responses(400, 404, 409, 413))
    async def report_usage(license_id: LicenseId, body: UsageRequest, request: Request) -> UsageView:
        """Count uses of a purchased license; past the allowance a UsageViolationDetected is published."""
        license, result = await _run(app, ReportUsage(license_id=license_id, uses=body.uses), request)
        return UsageView(
            license=LicenseView.of(license),
            command_id=result.command_id,
            correlation_id=result.correlation_id,
            exceeded=license.used > license.allowed_uses,
        )

    @api.get("/licenses/{license_id}", response_model=LicenseView, responses=error_responses(404))
    async def get_license(license_id: LicenseId, request: Request) -> LicenseView:
        """The license as last committed (404 for an unknown id, or another tenant's)."""
        return LicenseView.of(await app.load(License, license_id, tenant=command_context(request).tenant))

    @api.get("/usage-by-day", response_model=list[DayUsageView], responses=error_responses())
    async def get_usage_by_day(
        request: Request, start: IsoDate | None = None, end: IsoDate | None = None
    ) -> list[DayUsageView]:
        """The caller's purchases and usage per UTC day from ``start`` to ``end`` (inclusive), oldest first."""
        days = await usage_by_day(start, end, tenant=command_context(request).tenant)
        return [DayUsageView(**asdict(day)) for day in days]

    return api
