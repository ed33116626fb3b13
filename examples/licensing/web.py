"""What the HTTP API of every context shares: strict request bodies, bounded text, one error body, the caller's tenant.

Like ``kernel.py`` this is shared plumbing, not a context: it imports no context, so every
context's ``infrastructure/api.py`` may use it. The request models are strict (``true`` is not a
number, ``"3"`` is not an int), refuse unknown fields, and bound every string and integer in
their schema, so the OpenAPI document says exactly what is accepted: a request that fits it is
taken, one that does not is a 422 naming the field (checked by schemathesis in
``tests/licensing/test_api_fuzz.py``). Every error answer, whichever context gives it, has the
body :class:`ErrorBody`, documented per route with :func:`error_responses`.

The caller's tenant comes in the ``X-Tenant`` header (see :func:`tenant_of`); a gateway in front
of the platform sets it from the caller's credentials and strips any the caller sent.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any

from fastapi import Header, Request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from tidings.messaging import MessageContext

__all__ = [
    "BIGINT_MAX",
    "ErrorBody",
    "Integer",
    "IsoDate",
    "LINE",
    "MAX_BODY_BYTES",
    "PARAGRAPH",
    "Problem",
    "RequestBody",
    "TENANT_HEADER",
    "TENANT_PATTERN",
    "command_context",
    "error_responses",
    "tenant_of",
]

#: The largest request body a route reads, unless it says otherwise (a command is a few hundred
#: bytes); a bigger one is refused with 413 while it arrives, before it is held in memory whole.
MAX_BODY_BYTES = 1024 * 1024

#: The largest integer both stores hold (SQLite INTEGER and PostgreSQL BIGINT are signed 64-bit).
BIGINT_MAX = 2**63 - 1

# Spelled out instead of ``\S``: JSON Schema (ECMAScript), pydantic (Rust) and Python disagree on
# what ``\s`` means (U+FEFF, U+001C-U+001F), and the document and the check must agree exactly.
_SPACE = "\\x00-\\x20\\x7f\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff"
#: One line of text with at least one visible character: no control characters (NUL breaks PostgreSQL).
LINE = f"^[^\\x00-\\x1f\\x7f]*[^{_SPACE}][^\\x00-\\x1f\\x7f]*$"
#: Free text that may be empty and span lines (tabs and line breaks allowed, other controls not).
PARAGRAPH = "^[^\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f]*$"

TENANT_HEADER = "X-Tenant"
#: What a tenant id may look like: it is stored in every envelope and compared, never interpreted.
TENANT_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def _whole_number(value: Any) -> Any:
    # JSON Schema counts 3.0 as an integer, so the document promises it is taken; a strict int
    # alone would refuse it. A bool stays a bool, and the strict check refuses it.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: An integer field of a request body: 3 and 3.0, never true, "3" or 3.5.
Integer = Annotated[int, BeforeValidator(_whole_number)]


_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _iso_date_text(value: Any) -> Any:
    # pydantic would also read 0 or 1700000000 as a date (seconds since 1970); the document
    # says "format: date", so only YYYY-MM-DD is one.
    if isinstance(value, str) and not _ISO_DATE.fullmatch(value):
        raise ValueError(f"must be a date as YYYY-MM-DD, got {value!r}")
    return value


#: A date in a query string: YYYY-MM-DD only.
IsoDate = Annotated[date, BeforeValidator(_iso_date_text)]


class RequestBody(BaseModel):
    """Base of every request body: strict types, no unknown fields (a typo is a 422, not silently ignored)."""

    model_config = ConfigDict(strict=True, extra="forbid")


class Problem(BaseModel):
    """One thing wrong with a request: where (a dotted path like ``body.price_cents``) and why."""

    field: str
    message: str
    type: str


class ErrorBody(BaseModel):
    """The body of every error answer (400, 404, 409, 413, 422, 500, 503), whichever context gives it."""

    error: str = Field(description="the kind: validation_error, not_found, conflict, domain_error, message_too_large, …")
    detail: str = Field(description="what was wrong and what to do, in one sentence")
    correlation_id: str = Field(description="the request's X-Correlation-ID: quote it, or `tidings trace` it")
    field: str | None = Field(None, description="the field that was wrong, as a dotted path (body.price_cents)")
    message_type: str | None = Field(None, description="the command whose field was wrong")
    aggregate_type: str | None = None
    aggregate_id: str | None = None
    errors: list[Problem] | None = Field(None, description="every problem of a request that did not parse")


_MEANINGS = {
    400: "the body is not text in UTF-8, so it cannot be read as JSON",
    404: "no such aggregate for the caller's tenant",
    409: "refused by an invariant, or lost a race with a concurrent change (reload and retry)",
    413: "the request body, or a message the request causes, is over its size limit",
    422: "a field or header is missing, of the wrong type or out of bounds",
    503: "a broker the request needs is not available; send the same request again",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route that may answer ``statuses`` (and 422), each with the ErrorBody schema."""
    return {status: {"model": ErrorBody, "description": _MEANINGS[status]} for status in sorted({422, *statuses})}


async def tenant_of(
    request: Request,
    tenant: Annotated[
        str | None,
        Header(
            alias=TENANT_HEADER,
            pattern=TENANT_PATTERN,
            description="the caller's tenant: commands act only on its aggregates, reads show only its data",
        ),
    ] = None,
) -> str | None:
    """The caller's tenant from the ``X-Tenant`` header (None: a single-tenant platform), kept on ``request.state``."""
    request.state.tenant = tenant
    return tenant


def command_context(request: Request) -> MessageContext:
    """The context of a command a request sends: its correlation id and the caller's tenant."""
    # The composition root's middleware puts the correlation id here (from X-Correlation-ID or a
    # new one); without it the command's own id becomes the correlation.
    return MessageContext(
        correlation_id=getattr(request.state, "correlation_id", None), tenant=getattr(request.state, "tenant", None)
    )
