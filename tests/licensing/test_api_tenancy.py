"""The API answers only the caller's tenant (the X-Tenant header): its commands, its aggregates, its read models.

One asset of tenant acme goes the whole way (upload, processing saga, search index, Licensing's
ACL, an offer, a purchase, the usage read model, Compliance's investigation and alerts) while
globex asks about it at every step.
"""

from __future__ import annotations

import hashlib

import httpx

from examples.licensing.platform import Platform
from tests.licensing.test_api import client, platform  # noqa: F401

ACME = {"X-Tenant": "acme"}
GLOBEX = {"X-Tenant": "globex"}


async def test_each_tenant_sees_and_changes_only_its_own_assets_licenses_and_read_models(
    client: httpx.AsyncClient, platform: Platform
) -> None:
    await platform.start(("relay", "consumers", "projector", "scheduler"))
    upload = {
        "owner_id": "ada",
        "title": "Harbour at dawn",
        "media_type": "image/jpeg",
        "size_bytes": 2_400_000,
        "checksum": hashlib.sha256(b"harbour").hexdigest(),
    }
    accepted = await client.post("/asset_processing/assets", json=upload, headers=ACME)
    assert accepted.status_code == 202, accepted.text
    asset_id = accepted.json()["asset_id"]

    async def searchable_for_acme() -> bool:
        found = await client.get("/asset_processing/search", headers=ACME)
        return found.json()["count"] == 1

    assert await platform.settle(searchable_for_acme, timeout=30)
    # globex finds neither the asset nor it in the search index
    assert (await client.get("/asset_processing/search", headers=GLOBEX)).json()["count"] == 0
    hidden = await client.get(f"/asset_processing/assets/{asset_id}", headers=GLOBEX)
    assert hidden.status_code == 404 and hidden.json()["error"] == "not_found", hidden.text
    assert (await client.get(f"/asset_processing/assets/{asset_id}", headers=ACME)).json()["searchable"] is True

    # Licensing learnt of the asset as acme's (the tenant travelled with every event): globex cannot offer it
    offer = {"asset_id": asset_id, "buyer_id": "bob", "price_cents": 2500, "allowed_uses": 2}
    refused = await client.post("/licensing/licenses", json=offer, headers=GLOBEX)
    assert refused.status_code == 404, refused.text
    offered = await client.post("/licensing/licenses", json=offer, headers=ACME)
    assert offered.status_code == 201, offered.text
    license_id = offered.json()["license"]["license_id"]

    # globex can neither read nor buy acme's license; acme can
    assert (await client.get(f"/licensing/licenses/{license_id}", headers=GLOBEX)).status_code == 404
    bought_by_globex = await client.post(f"/licensing/licenses/{license_id}/purchase", json={"buyer_id": "bob"}, headers=GLOBEX)
    assert bought_by_globex.status_code == 404
    assert "tenant 'globex'" in bought_by_globex.json()["detail"]
    assert (await client.get(f"/licensing/licenses/{license_id}", headers=ACME)).json()["sold"] is False
    bought = await client.post(f"/licensing/licenses/{license_id}/purchase", json={"buyer_id": "bob"}, headers=ACME)
    assert bought.status_code == 200, bought.text

    async def purchase_counted() -> bool:
        days = (await client.get("/licensing/usage-by-day", headers=ACME)).json()
        return sum(day["purchases"] for day in days) == 1

    assert await platform.settle(purchase_counted, timeout=20)
    assert (await client.get("/licensing/usage-by-day", headers=GLOBEX)).json() == []

    # Usage past the allowance opens acme's investigation in Compliance: on acme's alerts only
    exceeded = await client.post(f"/licensing/licenses/{license_id}/usage", json={"uses": 3}, headers=ACME)
    assert exceeded.json()["exceeded"] is True

    async def acme_alerted() -> bool:
        return len((await client.get("/compliance/alerts", headers=ACME)).json()) == 1

    assert await platform.settle(acme_alerted, timeout=20)
    assert (await client.get("/compliance/alerts", headers=GLOBEX)).json() == []
    [alert] = (await client.get("/compliance/alerts", headers=ACME)).json()
    investigation = await client.get(f"/compliance/investigations/{alert['investigation_id']}", headers=GLOBEX)
    assert investigation.status_code == 404


async def test_a_malformed_tenant_is_refused_naming_the_header(client: httpx.AsyncClient) -> None:
    response = await client.get("/licensing/usage-by-day", headers={"X-Tenant": "acme; DROP"})
    assert response.status_code == 422
    assert response.json()["field"] == "header.X-Tenant"
