"""FastAPI integration: run the roles in the app's process, hand handlers the Application, map our errors.

    api = FastAPI(lifespan=tidings.fastapi.lifespan(app, relay=relay, consumers=[...], sessions=sessions))
    tidings.fastapi.install(api)          # X-Correlation-ID middleware and the error handlers

    @api.post("/licenses/{license_id}/purchase")
    async def purchase(license_id: str, body: Purchase, app: TidingsApplication,
                       context: CommandContext, session: AsyncSession = UserSession) -> dict:
        session.add(Invoice(...))
        await tidings.joined.handle(app, PurchaseLicense(...), session=session, context=context)

Errors answer with one body, ``{"error", "detail", "correlation_id", "field"?, "message_type"?,
"aggregate_type"?, "aggregate_id"?}``: ValidationError and other message errors 422 (naming the
field), DomainError and ConcurrencyError 409, AggregateNotFound (and WrongTenant) 404,
MessageTooLarge 413.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidings.app.application import Application
from tidings.domain.errors import AggregateNotFound, ConcurrencyError, DomainError, ValidationError
from tidings.messaging.envelope import MessageContext
from tidings.messaging.errors import MessageError, MessageTooLarge
from tidings.messaging.ids import new_id

if TYPE_CHECKING:
    from tidings.runtime import Consumer, Projector, Relay, Scheduler

__all__ = [
    "CORRELATION_HEADER",
    "CORRELATION_ID_PATTERN",
    "CommandContext",
    "CorrelationMiddleware",
    "TRACEPARENT_HEADER",
    "TidingsApplication",
    "UserSession",
    "add_error_handlers",
    "command_context",
    "get_application",
    "get_session",
    "install",
    "lifespan",
]

log = logging.getLogger("tidings.fastapi")

CORRELATION_HEADER = "X-Correlation-ID"
TRACEPARENT_HEADER = "traceparent"
#: What a caller may send as X-Correlation-ID: it ends up in every envelope and log line, so a
#: printable token of sane length (a UUID, a ULID, a gateway's request id).
CORRELATION_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}"
_CORRELATION_ID = re.compile(CORRELATION_ID_PATTERN)
# W3C Trace Context, version 00: an unparseable traceparent is dropped (the spec says restart), not refused.
_TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


# -- the roles in the app's process --------------------------------------------------------------


def lifespan(
    application: Application,
    *,
    relay: Relay | None = None,
    consumers: Iterable[Consumer] = (),
    projector: Projector | None = None,
    schedulers: Iterable[Scheduler] = (),
    sessions: Callable[[], Any] | None = None,
    subscribe_timeout: float = 30.0,
    stop_timeout: float = 10.0,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A FastAPI ``lifespan`` that runs the given roles as tasks of the app's event loop, and stops them.

    Pass none of them for an API-only process (the roles run elsewhere). Startup returns once
    every consumer is subscribed (so nothing published from then on passes unseen) and fails if
    one is not within ``subscribe_timeout`` seconds or a role crashes first. Shutdown asks every
    role to stop and cancels what has not stopped within ``stop_timeout`` seconds. ``sessions``
    (a SQLAlchemy ``async_sessionmaker``) is what :data:`UserSession` opens per request.
    """
    chosen_consumers = list(consumers)
    chosen_schedulers = list(schedulers)

    @asynccontextmanager
    async def run(api: FastAPI) -> AsyncIterator[None]:
        api.state.tidings_application = application
        api.state.tidings_sessions = sessions
        stop = asyncio.Event()
        tasks: dict[str, asyncio.Task[None]] = {}
        try:
            if projector is not None:
                await projector.prepare()
                tasks["projector"] = asyncio.create_task(projector.run(stop), name="projector")
            for consumer in chosen_consumers:
                tasks[f"consumer {consumer.name}"] = asyncio.create_task(consumer.run(stop), name=consumer.name)
            for n, scheduler in enumerate(chosen_schedulers):
                tasks[f"scheduler {n}"] = asyncio.create_task(scheduler.run(stop), name=f"scheduler {n}")
            if relay is not None:
                tasks["relay"] = asyncio.create_task(relay.run(stop), name="relay")
            await _subscribed(chosen_consumers, tasks, subscribe_timeout)
            yield
        finally:
            stop.set()
            await _stopped(tasks, stop_timeout)

    return run


async def _subscribed(consumers: list[Consumer], tasks: dict[str, asyncio.Task[None]], timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not all(consumer.subscribed for consumer in consumers):
        for name, task in tasks.items():
            if task.done():
                error = None if task.cancelled() else task.exception()
                raise RuntimeError(f"role {name} ended while the app was starting: {error!r}") from error
        if asyncio.get_running_loop().time() > deadline:
            waiting = ", ".join(c.name for c in consumers if not c.subscribed)
            raise TimeoutError(f"consumers not subscribed after {timeout} s: {waiting} — is the broker reachable?")
        await asyncio.sleep(0.05)


async def _stopped(tasks: dict[str, asyncio.Task[None]], timeout: float) -> None:
    if not tasks:
        return
    _, late = await asyncio.wait(tasks.values(), timeout=timeout)
    for task in late:
        task.cancel()
    results = await asyncio.gather(*tasks.values(), return_exceptions=True)
    for name, result in zip(tasks, results, strict=True):
        if isinstance(result, Exception):
            log.error("role %s ended with %s: %s", name, type(result).__name__, result)


# -- dependencies ---------------------------------------------------------------------------------


def get_application(request: Request) -> Application:
    """The Application the lifespan was given (a dependency)."""
    application = getattr(request.app.state, "tidings_application", None)
    if application is None:
        raise RuntimeError("no tidings Application on this app: create it with FastAPI(lifespan=tidings.fastapi.lifespan(app, …))")
    return application  # type: ignore[no-any-return]


async def get_session(request: Request) -> AsyncIterator[Any]:
    """A SQLAlchemy ``AsyncSession`` with a transaction begun: committed when the handler returns, rolled back if it raises.

    Use it through :data:`UserSession`, which ends it before the response is sent, so a commit that
    fails is the request's error, never a success the database did not keep.
    """
    sessions = getattr(request.app.state, "tidings_sessions", None)
    if sessions is None:
        raise RuntimeError("no SQLAlchemy sessions on this app: pass sessions=async_sessionmaker(engine) to tidings.fastapi.lifespan")
    async with sessions() as session, session.begin():
        yield session


def command_context(request: Request) -> MessageContext:
    """The MessageContext of a command a request sends: its correlation id (and traceparent, where the context has one)."""
    correlation_id = getattr(request.state, "correlation_id", None)
    traceparent = getattr(request.state, "traceparent", None)
    if traceparent is not None and "traceparent" in MessageContext.__struct_fields__:
        return MessageContext(correlation_id=correlation_id, traceparent=traceparent)  # type: ignore[call-arg]
    return MessageContext(correlation_id=correlation_id)


#: ``app: TidingsApplication`` in a route's parameters: the lifespan's Application.
TidingsApplication = Annotated[Application, Depends(get_application)]
#: ``context: CommandContext``: pass it as ``context=`` to ``handle`` so the events carry the request's ids.
CommandContext = Annotated[MessageContext, Depends(command_context)]
#: ``session: AsyncSession = UserSession``: the user's session in a transaction, committed before the response.
UserSession: Any = Depends(get_session, scope="function")


# -- middleware and errors ------------------------------------------------------------------------


class CorrelationMiddleware:
    """ASGI middleware: keep the caller's X-Correlation-ID or make one; keep a valid traceparent; echo the id back.

    Both land on ``request.state`` (``correlation_id``, ``traceparent``) for :func:`command_context`.
    A malformed X-Correlation-ID is refused with 422 before any route runs: it would reach every
    envelope and log line.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        given = (headers.get(CORRELATION_HEADER) or "").strip()
        state = scope.setdefault("state", {})
        if given and not _CORRELATION_ID.fullmatch(given):
            correlation_id = new_id()
            state["correlation_id"] = correlation_id
            response = _error(
                422,
                "validation_error",
                f"{CORRELATION_HEADER} must be 1 to 128 letters, digits or ._:- characters, starting with a letter or digit",
                correlation_id,
                field=f"header.{CORRELATION_HEADER}",
            )
            await response(scope, receive, send)
            return
        correlation_id = given or new_id()
        state["correlation_id"] = correlation_id
        traceparent = (headers.get(TRACEPARENT_HEADER) or "").strip().lower()
        state["traceparent"] = traceparent if _TRACEPARENT.fullmatch(traceparent) else None

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                if CORRELATION_HEADER.lower() not in response_headers:
                    response_headers.append(CORRELATION_HEADER, correlation_id)
            await send(message)

        await self.app(scope, receive, send_with_header)


def _error(status: int, error: str, detail: str, correlation_id: str, **extra: Any) -> JSONResponse:
    body = {"error": error, "detail": detail, **{k: v for k, v in extra.items() if v is not None}, "correlation_id": correlation_id}
    return JSONResponse(body, status_code=status, headers={CORRELATION_HEADER: correlation_id})


def _correlation_id_of(request: Request) -> str:
    correlation_id = getattr(request.state, "correlation_id", None)
    if not correlation_id:
        correlation_id = request.state.correlation_id = new_id()
    return str(correlation_id)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ValidationError)
    return _error(
        422, "validation_error", str(exc), _correlation_id_of(request), field=exc.field, message_type=exc.message_type
    )


async def _message_error(request: Request, exc: Exception) -> JSONResponse:
    return _error(422, "message_error", str(exc), _correlation_id_of(request), field=getattr(exc, "field", None))


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AggregateNotFound)
    return _error(
        404, "not_found", str(exc), _correlation_id_of(request), aggregate_type=exc.aggregate_type, aggregate_id=exc.aggregate_id
    )


async def _conflict(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ConcurrencyError)
    return _error(
        409, "conflict", str(exc), _correlation_id_of(request), aggregate_type=exc.aggregate_type, aggregate_id=exc.aggregate_id
    )


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    return _error(409, "domain_error", str(exc), _correlation_id_of(request))


async def _too_large(request: Request, exc: Exception) -> JSONResponse:
    return _error(413, "message_too_large", str(exc), _correlation_id_of(request))


def add_error_handlers(api: FastAPI) -> None:
    """Answer tidings' errors with the status they mean and one error body naming the field or aggregate."""
    # Starlette picks the handler of the most specific class, so MalformedMessage (a message
    # error and a validation error) and WrongTenant (an AggregateNotFound) land right.
    api.add_exception_handler(ValidationError, _validation_error)
    api.add_exception_handler(MessageError, _message_error)
    api.add_exception_handler(MessageTooLarge, _too_large)
    api.add_exception_handler(AggregateNotFound, _not_found)
    api.add_exception_handler(ConcurrencyError, _conflict)
    api.add_exception_handler(DomainError, _domain_error)


def install(api: FastAPI) -> None:
    """Add the correlation middleware and the error handlers to ``api`` (the lifespan is passed to FastAPI itself)."""
    api.add_middleware(CorrelationMiddleware)
    add_error_handlers(api)
