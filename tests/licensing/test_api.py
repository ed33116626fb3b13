"""The platform's HTTP API: errors map to 422/409/404 naming what was wrong, and every response carries a correlation id."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from examples.licensing.api import CORRELATION_HEADER, create_app
from examples.licensing.kernel import Settings
from examples.licensing.licensing.domain import RegisterLicensableAsset
from examples.licensing.platform import Platform

ASSET = "asset-api-1"
BUYER = "buyer-ada"


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Platform]:
    """A platform on a fresh SQLite file and the local broker, its roles not started."""
    opened = await Platform(f"sqlite:///{tmp_path / 'api.db'}", "local:", settings=Settings(stall_after=60)).open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def client(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the platform's API in-process."""
    transport = httpx.ASGITransport(app=create_app(platform), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://platform") as http:
        yield http


async def searchable_asset(platform: Platform, asset_id: str = ASSET) -> None:
    """Tell Licensing an asset is searchable, as its ACL does when AssetReadyForSearch arrives."""
    licensing = platform.contexts["licensing"].application
    await licensing.handle(RegisterLicensableAsset(asset_id=asset_id, owner_id="owner-1", title="Dunes", media_type="image/jpeg"))


async def offered_license(client: httpx.AsyncClient, platform: Platform) -> str:
    await searchable_asset(platform)
    response = await client.post(
        "/licensing/licenses", json={"asset_id": ASSET, "buyer_id": BUYER, "price_cents": 2500, "allowed_uses": 2}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["license"]["license_id"])


async def test_health_reports_the_store_and_the_contexts(client: httpx.AsyncClient, platform: Platform) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["store"] == "ok"
    assert set(body["contexts"]) == set(platform.contexts)


async def test_a_given_correlation_id_is_kept_in_the_response(client: httpx.AsyncClient) -> None:
    response = await client.get("/health", headers={CORRELATION_HEADER: "req-42.abc"})
    assert response.headers[CORRELATION_HEADER] == "req-42.abc"
    assert response.json()["correlation_id"] == "req-42.abc"


async def test_a_correlation_id_is_made_when_none_is_given(client: httpx.AsyncClient) -> None:
    first = await client.get("/health")
    second = await client.get("/health")
    made = first.headers[CORRELATION_HEADER]
    assert len(made) == 36 and made.count("-") == 4  # a UUID (v7 from tidings.messaging.new_id)
    assert second.headers[CORRELATION_HEADER] != made


async def test_a_malformed_correlation_id_is_refused_naming_the_header(client: httpx.AsyncClient) -> None:
    response = await client.get("/health", headers={CORRELATION_HEADER: "no spaces; or semicolons"})
    assert response.status_code == 422
    assert response.json()["field"] == f"header.{CORRELATION_HEADER}"
    assert response.headers[CORRELATION_HEADER] == response.json()["correlation_id"]


async def test_a_field_out_of_its_documented_bounds_is_422_naming_the_field_and_the_bound(
    client: httpx.AsyncClient, platform: Platform
) -> None:
    await searchable_asset(platform)
    response = await client.post(
        "/licensing/licenses",
        json={"asset_id": ASSET, "buyer_id": BUYER, "price_cents": -5, "allowed_uses": 2},
        headers={CORRELATION_HEADER: "bad-price"},
    )
    assert response.status_code == 422
    body = response.json()
    # Refused at the door by the bound the OpenAPI document states (the command checks it too).
    assert body["field"] == "body.price_cents"
    assert "greater than or equal to 1" in body["detail"]
    assert body["correlation_id"] == "bad-price"
    assert response.headers[CORRELATION_HEADER] == "bad-price"


async def test_a_malformed_body_is_422_naming_the_field(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/licensing/licenses", json={"asset_id": ASSET, "buyer_id": BUYER, "price_cents": "lots", "allowed_uses": 2}
    )
    assert response.status_code == 422
    body = response.json()
    assert body["field"] == "body.price_cents"
    assert body["errors"][0]["field"] == "body.price_cents"
    assert body["correlation_id"] == response.headers[CORRELATION_HEADER]


async def test_a_missing_field_is_422_naming_it(client: httpx.AsyncClient) -> None:
    response = await client.post("/licensing/licenses", json={"asset_id": ASSET, "price_cents": 1, "allowed_uses": 2})
    assert response.status_code == 422
    assert response.json()["field"] == "body.buyer_id"


async def test_a_second_purchase_is_409_with_the_invariant(client: httpx.AsyncClient, platform: Platform) -> None:
    license_id = await offered_license(client, platform)
    first = await client.post(f"/licensing/licenses/{license_id}/purchase", json={"buyer_id": BUYER})
    assert first.status_code == 200, first.text
    second = await client.post(
        f"/licensing/licenses/{license_id}/purchase", json={"buyer_id": BUYER}, headers={CORRELATION_HEADER: "again"}
    )
    assert second.status_code == 409
    body = second.json()
    assert body["error"] == "domain_error"
    assert license_id in body["detail"] or "purchased" in body["detail"].lower()
    assert body["correlation_id"] == "again" == second.headers[CORRELATION_HEADER]


async def test_an_unknown_license_is_404_naming_it(client: httpx.AsyncClient) -> None:
    response = await client.get("/licensing/licenses/no-such-license")
    assert response.status_code == 404
    body = response.json()
    assert body["aggregate_id"] == "no-such-license"
    assert body["correlation_id"] == response.headers[CORRELATION_HEADER]


async def test_a_command_on_an_unknown_license_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/licensing/licenses/no-such-license/usage", json={"uses": 1})
    assert response.status_code == 404
    assert response.json()["aggregate_id"] == "no-such-license"


async def test_an_unknown_route_is_404_with_a_correlation_id(client: httpx.AsyncClient) -> None:
    response = await client.get("/nowhere", headers={CORRELATION_HEADER: "lost"})
    assert response.status_code == 404
    assert response.json()["correlation_id"] == "lost"


async def test_the_request_correlation_id_reaches_the_commands_events(client: httpx.AsyncClient, platform: Platform) -> None:
    await searchable_asset(platform)
    response = await client.post(
        "/licensing/licenses",
        json={"asset_id": ASSET, "buyer_id": BUYER, "price_cents": 100, "allowed_uses": 1},
        headers={CORRELATION_HEADER: "flow-7"},
    )
    assert response.status_code == 201
    events = await platform.store.read_correlation("flow-7")
    assert [event.event_type.rsplit(".", 1)[-1] for event in events] == ["LicenseOffered"]


async def test_the_openapi_document_lists_every_contexts_endpoints(client: httpx.AsyncClient, platform: Platform) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "/health" in paths
    for name in platform.contexts:
        assert any(path.startswith(f"/{name}/") for path in paths), f"no endpoint of {name} in {sorted(paths)}"
    assert "post" in paths["/licensing/licenses/{license_id}/purchase"]


async def test_garbage_through_the_partner_feed_is_dead_lettered_with_reasons_and_nothing_accepted_is_lost(
    client: httpx.AsyncClient, platform: Platform
) -> None:
    license_id = await offered_license(client, platform)
    assert (await client.post(f"/licensing/licenses/{license_id}/purchase", json={"buyer_id": BUYER})).status_code == 200
    await platform.start(("relay", "consumers"))

    async def compliance_knows_the_license() -> bool:
        rows = await platform.store.fetch("SELECT count(*) FROM tidings_inbox WHERE consumer = 'compliance.licensing-events'")
        return int(rows[0][0]) == 1

    assert await platform.settle(compliance_knows_the_license, timeout=20)
    good = {"license": license_id, "client": BUYER, "period_end": "31/12/2024", "units_licensed": "2"}
    lines = [
        '{"report_id": "R-1", "license": "%s", "client": "%s", "units_used": "3", "units_licensed": "2", "period_end": "31/12/2024"}'
        % (license_id, BUYER),
        '{"report_id": "R-1", "license": "%s", "client": "%s", "units_used": "3", "units_licensed": "2", "period_end": "31/12/2024"}'
        % (license_id, BUYER),  # the same report again
        '{"report_id": "R-2", "units_used": "-1", ' + ", ".join(f'"{k}": "{v}"' for k, v in good.items()) + "}",
        '{"report_id": "R-3", "license": "%s", "units_used": "1", "units_licensed": "2", "period_end": "31/12/2024"}' % license_id,
        "{not json",
        '["an", "array"]',
    ]
    response = await client.post(
        "/compliance/partner-feed",
        params={"partner": "acme"},
        content="\n".join(lines).encode(),
        headers={"Content-Type": "application/x-ndjson", CORRELATION_HEADER: "partner-batch-1"},
    )
    assert response.status_code == 202, response.text
    receipt = response.json()
    assert receipt["accepted"] == 6 and receipt["distinct"] == 5
    assert response.headers[CORRELATION_HEADER] == "partner-batch-1"

    partner_reports = platform.extra("compliance")["partner_reports"]

    async def dead_letters() -> list[tuple[str, str]]:
        rows = await platform.store.fetch(
            "SELECT reason, error FROM tidings_dead_letters WHERE consumer = 'compliance.partner-feed' ORDER BY id"
        )
        return [(str(reason), str(error)) for reason, error in rows]

    async def settled() -> bool:
        return len(await partner_reports(partner="acme")) + len(await dead_letters()) >= receipt["distinct"]

    assert await platform.settle(settled, timeout=30)
    applied = await partner_reports(partner="acme")
    dead = await dead_letters()
    assert len(applied) + len(dead) == receipt["distinct"]  # nothing accepted is lost
    assert [report.report_id for report in applied] == ["R-1"]  # the copy was applied once
    assert len(dead) == 4
    errors = "\n".join(error for _, error in dead)
    assert all(reason for reason, _ in dead)
    for named in ("units_used", "client", "JSON"):
        assert named in errors, f"no dead letter names {named!r}:\n{errors}"
