"""The platform's HTTP API: every context's router under ``/<context>``, correlation ids, and errors that teach.

Every request gets a correlation id: the ``X-Correlation-ID`` header it brought, or a new UUIDv7.
It is stored on ``request.state.correlation_id`` (the context routers pass it to their commands,
so every event a request causes carries it) and returned in the response's ``X-Correlation-ID``
header, on errors too. Errors map to statuses the same way in every context:

    ValidationError (a command field)     422  names the field and the message type
    request body / query does not parse   422  names the field (``body.price_cents``)
    DomainError, ConcurrencyError         409  the invariant or the race, as the domain said it
    AggregateNotFound, WrongTenant        404  which aggregate and id (another tenant's looks unknown)
    MessageTooLarge, a body over its limit 413

Every error body, of every route and of this middleware, is ``examples.licensing.web.ErrorBody``
(``{"error", "detail", "correlation_id", "field"?, "errors"?, ...}``), documented per route in the
OpenAPI document with the statuses that route can answer.

The caller's tenant is the ``X-Tenant`` header (documented on every route; a gateway in front of
the platform sets it from the caller's credentials). With it, commands act only on that tenant's
aggregates (another's is a 404), reads answer only that tenant's data, and every event the request
causes carries the tenant, so the read models and consumers downstream keep it apart. Without it
the platform is single-tenant.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from examples.licensing.compliance.infrastructure.api import MAX_BATCH_BYTES
from examples.licensing.web import MAX_BODY_BYTES, error_responses, tenant_of
from tidings.fastapi import CORRELATION_HEADER, CORRELATION_ID_PATTERN, CorrelationMiddleware, add_error_handlers
from tidings.messaging.ids import new_id
from tidings.messaging.redaction import redact_url, scrub

if TYPE_CHECKING:
    from examples.licensing.platform import Platform

__all__ = ["CORRELATION_HEADER", "BodyLimitMiddleware", "CorrelationIdMiddleware", "correlation_id_of", "create_app"]

log = logging.getLogger("examples.licensing.api")

#: The correlation middleware is tidings' own (keeps or makes the id, continues a traceparent).
CorrelationIdMiddleware = CorrelationMiddleware


class BodyLimitMiddleware:
    """ASGI middleware: refuse a request body over its path's limit with 413, before it is held in memory whole.

    A declared Content-Length over the limit is refused at once; a body that streams past it (no
    or a false Content-Length) stops the route's read with the same 413. Both answers carry the
    platform's error body, which FastAPI's own limit (plain text, outside our middleware) would not.
    """

    def __init__(self, app: ASGIApp, *, default: int, by_path: dict[str, int] | None = None) -> None:
        self.app = app
        self.default = default
        self.by_path = dict(by_path or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.by_path.get(scope["path"], self.default)
        too_large = f"the request body is over the limit of {limit} bytes for {scope['path']}; send less, or split it"
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            correlation_id = scope.get("state", {}).get("correlation_id") or new_id()
            await _error(413, "body_too_large", too_large, correlation_id)(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise StarletteHTTPException(413, too_large)
            return message

        await self.app(scope, counting_receive, send)


def correlation_id_of(request: Request) -> str:
    """The correlation id of ``request`` (set by the middleware; a new one if the middleware did not run)."""
    correlation_id = getattr(request.state, "correlation_id", None)
    if not correlation_id:
        correlation_id = request.state.correlation_id = new_id()
    return str(correlation_id)


async def _correlation_header(
    correlation_id: Annotated[
        str | None,
        Header(
            alias=CORRELATION_HEADER,
            pattern=f"^{CORRELATION_ID_PATTERN}$",
            description="your id for this request's flow (`tidings trace ID`); a new one is made without it",
        ),
    ] = None,
) -> None:
    """Documents X-Correlation-ID on every route (CorrelationIdMiddleware checks and uses it)."""


def _error(status: int, error: str, detail: Any, correlation_id: str, **extra: Any) -> JSONResponse:
    body = {"error": error, "detail": str(detail), **{k: v for k, v in extra.items() if v is not None}, "correlation_id": correlation_id}
    return JSONResponse(body, status_code=status, headers={CORRELATION_HEADER: correlation_id})


def _field_of(location: Any) -> str:
    return ".".join(str(part) for part in location)


def create_app(platform: Platform) -> FastAPI:
    """The FastAPI application of ``platform``: each context's router under ``/<context>``, health, errors."""
    app = FastAPI(
        title="tidings media licensing",
        version="1.0",
        description=(
            "The reference platform of tidings: Asset Processing, Licensing and Compliance. "
            f"Send {CORRELATION_HEADER} to follow one flow across contexts (`tidings trace ID`)."
        ),
    )
    app.state.platform = platform
    # Added first, so it runs inside the correlation middleware and its 413 carries the id.
    app.add_middleware(BodyLimitMiddleware, default=MAX_BODY_BYTES, by_path={"/compliance/partner-feed": MAX_BATCH_BYTES})
    app.add_middleware(CorrelationIdMiddleware)

    # tidings' errors (422 naming the field, 409, 404, 413) answer with the same body as ours.
    add_error_handlers(app)

    @app.exception_handler(RequestValidationError)
    async def request_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": _field_of(error.get("loc", ())), "message": error.get("msg", ""), "type": error.get("type", "")}
            for error in exc.errors()
        ]
        first = problems[0] if problems else {"field": "body", "message": "invalid request"}
        detail = "; ".join(f"{p['field']}: {p['message']}" for p in problems) or "invalid request"
        return _error(422, "validation_error", detail, correlation_id_of(request), field=first["field"], errors=problems)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = "body_too_large" if exc.status_code == 413 else "http_error"
        response = _error(exc.status_code, error, exc.detail, correlation_id_of(request))
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Runs outside the correlation middleware (Starlette's outermost layer), so the header is set here.
        correlation_id = correlation_id_of(request)
        log.exception("unhandled error in %s %s (correlation %s)", request.method, request.url.path, correlation_id)
        return _error(500, "internal_error", f"{type(exc).__name__}: the server failed; quote the correlation id", correlation_id)

    @app.get(
        "/health",
        tags=["platform"],
        summary="Liveness: the store answers, and which contexts and roles run",
        dependencies=[Depends(_correlation_header)],
        responses=error_responses(),
    )
    async def health(request: Request) -> dict[str, Any]:
        """The platform's health: store reachable, contexts built (and missing), roles running."""
        try:
            await platform.store.fetch("SELECT 1", ())
            store = "ok"
        except Exception as exc:  # a health check reports, it does not fail the request
            store = f"{type(exc).__name__}: {scrub(str(exc), platform.database_url, platform.broker_url)}"
        return {
            "status": "ok" if store == "ok" and not platform.missing else "degraded",
            "store": store,
            "database": redact_url(platform.store.url) if platform.store is not None else None,
            "broker": redact_url(platform.broker_url),
            "contexts": sorted(platform.contexts),
            "missing": platform.missing,
            "running": platform.running,
            "correlation_id": correlation_id_of(request),
        }

    for name, parts in platform.contexts.items():
        if parts.router is not None:
            app.include_router(
                parts.router(parts),
                prefix=f"/{name}",
                dependencies=[Depends(_correlation_header), Depends(tenant_of)],
            )
    return app
