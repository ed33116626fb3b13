"""tidings.fastapi: the roles run in the app's process, handlers get the Application (and the user's session),
correlation ids are kept or made, and our errors answer 422/409/404/413 naming the field."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import BaseModel
from sqlalchemy import String
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from model import License, LicensePurchaseConfirmed, OfferLicense, PurchaseLicense, ReportUsage, make_app
from support import POSTGRES_URL, require_service
from tidings import Application, joined
from tidings.brokers.local import LocalBroker
from tidings.fastapi import CommandContext, TidingsApplication, UserSession, install, lifespan
from tidings.messaging import Envelope, new_id
from tidings.runtime import Consumer, HandlerContext, Relay
from tidings.store import Store, open_store
from tidings.store.postgres import PostgresStore


class Purchase(BaseModel):
    buyer: str


def make_api(app: Application, **roles: Any) -> FastAPI:
    """A service of the user's own: routes that send commands, with tidings' lifespan, middleware and errors."""
    api = FastAPI(lifespan=lifespan(app, **roles))
    install(api)

    @api.post("/licenses/{license_id}")
    async def offer(license_id: str, app: TidingsApplication, context: CommandContext) -> dict[str, str]:
        result = await app.handle(OfferLicense(license_id=license_id, product="Editor"), context=context)
        return {"correlation_id": result.correlation_id}

    @api.post("/licenses/{license_id}/purchase")
    async def purchase(license_id: str, body: Purchase, app: TidingsApplication, context: CommandContext) -> dict[str, str]:
        result = await app.handle(PurchaseLicense(license_id=license_id, buyer=body.buyer), context=context)
        return {"correlation_id": result.correlation_id}

    @api.post("/licenses/{license_id}/usage/{units}")
    async def usage(license_id: str, units: int, app: TidingsApplication) -> None:
        await app.handle(ReportUsage(license_id=license_id, units=units))

    @api.get("/trace")
    async def trace(request: Request) -> dict[str, Any]:
        return {"traceparent": request.state.traceparent, "correlation_id": request.state.correlation_id}

    return api


@pytest.fixture
async def client_of() -> AsyncIterator[Any]:
    """Runs an API's lifespan and gives an httpx client on its ASGI transport."""
    opened: list[Any] = []

    async def make(api: FastAPI) -> httpx.AsyncClient:
        lifespan_context = api.router.lifespan_context(api)
        await lifespan_context.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://test")
        opened.append((lifespan_context, client))
        return client

    yield make
    for lifespan_context, client in reversed(opened):
        await client.aclose()
        await lifespan_context.__aexit__(None, None, None)


async def test_a_request_flows_through_the_relay_to_a_consumer_in_the_apps_process(store: Store, client_of: Any) -> None:
    # Given a service whose lifespan runs the relay and a consumer of the purchase confirmations
    app = make_app(store)
    seen: list[Envelope] = []
    mailer = Consumer("mailer", store, LocalBroker(store), topics=["licensing"], registry=app.registry)

    @mailer.handler(LicensePurchaseConfirmed)
    async def mail(event: LicensePurchaseConfirmed, ctx: HandlerContext) -> None:
        seen.append(ctx.envelope)

    relay = Relay(store, LocalBroker(store), idle_wait=0.2)
    client = await client_of(make_api(app, relay=relay, consumers=[mailer]))
    license_id = new_id()
    # When a request with a correlation id offers and buys a license
    assert (await client.post(f"/licenses/{license_id}")).status_code == 200
    response = await client.post(f"/licenses/{license_id}/purchase", json={"buyer": "ada"}, headers={"X-Correlation-ID": "order-42"})
    # Then the id is kept, on the response and on every envelope the request caused, up to the consumer
    assert response.status_code == 200, response.text
    assert response.headers["X-Correlation-ID"] == "order-42"
    assert response.json() == {"correlation_id": "order-42"}
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert [(e.correlation_id, e.aggregate_id) for e in seen] == [("order-42", license_id)]


async def test_the_lifespan_stops_the_roles_it_started(store: Store) -> None:
    # Given a service whose lifespan started a relay and a consumer
    app = make_app(store)
    mailer = Consumer("mailer", store, LocalBroker(store), topics=["licensing"], registry=app.registry)

    @mailer.handler(LicensePurchaseConfirmed)
    async def mail(event: LicensePurchaseConfirmed, ctx: HandlerContext) -> None:
        pass

    api = make_api(app, relay=Relay(store, LocalBroker(store)), consumers=[mailer])
    async with api.router.lifespan_context(api):
        running = {task.get_name() for task in asyncio.all_tasks()}
        assert {"relay", "mailer"} <= running
        assert mailer.subscribed
    # When the app shuts down / then no task of theirs is left
    assert not {"relay", "mailer"} & {task.get_name() for task in asyncio.all_tasks()}


async def test_an_api_only_process_runs_no_roles(store: Store, client_of: Any) -> None:
    app = make_app(store)
    client = await client_of(make_api(app))
    license_id = new_id()
    assert (await client.post(f"/licenses/{license_id}")).status_code == 200
    response = await client.post(f"/licenses/{license_id}/purchase", json={"buyer": "ada"})
    # A correlation id is made when none is sent, and the outbox row waits for a relay elsewhere
    assert response.status_code == 200
    assert response.headers["X-Correlation-ID"] == response.json()["correlation_id"]
    assert [row.delivered_at for row in await store.read_outbox()] == [None]


async def test_our_errors_answer_with_their_status_and_name_the_field(store: Store, client_of: Any) -> None:
    app = make_app(store, max_message_bytes=200)
    client = await client_of(make_api(app))
    license_id = new_id()
    assert (await client.post(f"/licenses/{license_id}")).status_code == 200

    invalid = await client.post(f"/licenses/{license_id}/usage/0")
    assert invalid.status_code == 422
    assert (invalid.json()["field"], invalid.json()["message_type"]) == ("units", "ReportUsage")
    assert invalid.json()["correlation_id"] == invalid.headers["X-Correlation-ID"]

    unknown = await client.post(f"/licenses/{new_id()}/purchase", json={"buyer": "ada"})
    assert unknown.status_code == 404
    assert unknown.json()["aggregate_type"] == "License"

    too_large = await client.post(f"/licenses/{license_id}/purchase", json={"buyer": "x" * 500})
    assert too_large.status_code == 413, too_large.text
    assert too_large.json()["error"] == "message_too_large"

    assert (await client.post(f"/licenses/{license_id}/purchase", json={"buyer": "ada"})).status_code == 200
    again = await client.post(f"/licenses/{license_id}/purchase", json={"buyer": "bob"})
    assert again.status_code == 409
    assert "already sold" in again.json()["detail"]

    bad_id = await client.post(f"/licenses/{license_id}", headers={"X-Correlation-ID": "no spaces allowed"})
    assert bad_id.status_code == 422
    assert bad_id.json()["field"] == "header.X-Correlation-ID"
    assert (await app.load(License, license_id)).buyer == "ada"


async def test_a_traceparent_is_continued_and_a_malformed_one_dropped(store: Store, client_of: Any) -> None:
    client = await client_of(make_api(make_app(store)))
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    kept = await client.get("/trace", headers={"traceparent": traceparent})
    assert kept.json()["traceparent"] == traceparent
    dropped = await client.get("/trace", headers={"traceparent": "garbage"})
    assert dropped.json()["traceparent"] is None


class Base(DeclarativeBase):
    pass


class Invoice(Base):
    __tablename__ = "invoices"
    id: Mapped[str] = mapped_column(String, primary_key=True)
    buyer: Mapped[str] = mapped_column(String)


async def test_a_route_with_the_users_session_commits_their_rows_with_ours_or_neither(client_of: Any) -> None:
    # Given a PostgreSQL store and the user's SQLAlchemy sessions on the same database and schema
    require_service("PostgreSQL", "127.0.0.1", 5432)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    store = await open_store(POSTGRES_URL, schema=schema, migrate=True)
    assert isinstance(store, PostgresStore)
    engine = create_async_engine(
        POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://"), connect_args={"options": f"-c search_path={schema}"}
    )
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        app = make_app(store)
        api = make_api(app, sessions=async_sessionmaker(engine, expire_on_commit=False))

        @api.post("/invoices/{license_id}")
        async def invoice(
            license_id: str, body: Purchase, app: TidingsApplication, context: CommandContext, session: AsyncSession = UserSession
        ) -> dict[str, str]:
            session.add(Invoice(id=f"inv-{license_id}", buyer=body.buyer))
            await joined.handle(app, PurchaseLicense(license_id=license_id, buyer=body.buyer), session=session, context=context)
            return {"ok": "yes"}

        client = await client_of(api)
        sold, taken = new_id(), new_id()
        for license_id in (sold, taken):
            await app.handle(OfferLicense(license_id=license_id, product="Editor"))
        await app.handle(PurchaseLicense(license_id=taken, buyer="bob"))
        # When one request succeeds and another is refused by the domain after adding its ORM row
        assert (await client.post(f"/invoices/{sold}", json={"buyer": "ada"})).status_code == 200
        refused = await client.post(f"/invoices/{taken}", json={"buyer": "cy"})
        # Then the first committed its invoice and the purchase together; the second neither
        assert refused.status_code == 409
        assert [row[0] for row in await store.fetch("SELECT id FROM invoices")] == [f"inv-{sold}"]
        assert (await app.load(License, sold)).buyer == "ada"
        assert await store.count("outbox") == 2  # bob's purchase and ada's
    finally:
        await engine.dispose()
        await store.drop_schema()
        await store.close()


async def test_a_session_that_fails_to_commit_is_the_requests_error_not_a_success() -> None:
    # Given a route whose ORM row is only flushed by the commit after the handler returns
    require_service("PostgreSQL", "127.0.0.1", 5432)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    store = await open_store(POSTGRES_URL, schema=schema, migrate=True)
    engine = create_async_engine(
        POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://"), connect_args={"options": f"-c search_path={schema}"}
    )
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        api = make_api(make_app(store), sessions=async_sessionmaker(engine))

        @api.post("/invoices/{invoice_id}")
        async def invoice(invoice_id: str, session: AsyncSession = UserSession) -> dict[str, str]:
            session.add(Invoice(id=invoice_id, buyer="ada"))
            return {"ok": "yes"}

        async with api.router.lifespan_context(api), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=api, raise_app_exceptions=False), base_url="http://test"
        ) as client:
            assert (await client.post("/invoices/inv-1")).status_code == 200
            # When the same id is sent again, its commit fails on the primary key
            again = await client.post("/invoices/inv-1")
        # Then the client is not told it worked
        assert again.status_code == 500
    finally:
        await engine.dispose()
        await store.drop_schema()  # type: ignore[attr-defined]
        await store.close()
