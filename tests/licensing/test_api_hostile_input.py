"""Hostile input the fuzzer does not reach, found by hand: each is a clear 4xx (or accepted and judged later), never a 500."""

from __future__ import annotations

import httpx

from examples.licensing.platform import Platform
from tests.licensing.test_api import ASSET, BUYER, client, offered_license, platform, searchable_asset  # noqa: F401

CHECKSUM = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def assert_refused(response: httpx.Response, status: int, field: str) -> None:
    """The response is ``status`` with the documented error body naming ``field``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"]
    assert field in body["field"], body
    assert body["correlation_id"]


async def test_a_partner_batch_nested_deeper_than_any_decoder_goes_is_refused_as_json_and_taken_as_ndjson(
    client: httpx.AsyncClient,
) -> None:
    deep = b"[" * 20_000 + b"]" * 20_000
    as_json = await client.post(
        "/compliance/partner-feed", params={"partner": "acme"}, content=deep, headers={"Content-Type": "application/json"}
    )
    assert_refused(as_json, 422, "body")
    assert "deeper" in as_json.json()["detail"]
    as_lines = await client.post(
        "/compliance/partner-feed", params={"partner": "acme"}, content=deep, headers={"Content-Type": "application/x-ndjson"}
    )
    assert as_lines.status_code == 202, as_lines.text
    assert as_lines.json()["accepted"] == 1  # onto the feed as it is; the ACL dead-letters it with its reason


async def test_a_partner_record_that_is_not_utf8_is_taken_for_the_acl_to_judge(client: httpx.AsyncClient) -> None:
    lines = b'{"report_id": "R-\xff\xfe", "license": "x"}\n\xc3\x28 not text at all'
    response = await client.post(
        "/compliance/partner-feed",
        params={"partner": "acme"},
        content=lines,
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 2


async def test_a_search_of_a_thousand_words_is_refused_naming_the_query(client: httpx.AsyncClient) -> None:
    response = await client.get("/asset_processing/search", params={"q": " ".join(f"w{n}" for n in range(1_200))})
    assert_refused(response, 422, "q")


async def test_a_lone_surrogate_in_an_offer_is_refused_naming_the_field(client: httpx.AsyncClient, platform: Platform) -> None:
    await searchable_asset(platform)
    body = '{"asset_id": "%s", "buyer_id": "b\\ud800", "price_cents": 2500, "allowed_uses": 2}' % ASSET
    response = await client.post("/licensing/licenses", content=body, headers={"Content-Type": "application/json"})
    assert_refused(response, 422, "buyer_id")


async def test_a_nul_character_in_a_title_is_refused_naming_the_field(client: httpx.AsyncClient) -> None:
    upload = {"owner_id": "ada", "title": "dawn\x00", "media_type": "image/jpeg", "size_bytes": 10, "checksum": CHECKSUM}
    response = await client.post("/asset_processing/assets", json=upload)
    assert_refused(response, 422, "title")


async def test_a_size_beyond_what_the_stores_hold_is_refused_at_the_door(client: httpx.AsyncClient) -> None:
    upload = {"owner_id": "ada", "title": "dawn", "media_type": "image/jpeg", "size_bytes": 2**63, "checksum": CHECKSUM}
    response = await client.post("/asset_processing/assets", json=upload)
    assert_refused(response, 422, "size_bytes")


async def test_true_is_not_a_number_of_uses(client: httpx.AsyncClient, platform: Platform) -> None:
    license_id = await offered_license(client, platform)
    assert (await client.post(f"/licensing/licenses/{license_id}/purchase", json={"buyer_id": BUYER})).status_code == 200
    response = await client.post(f"/licensing/licenses/{license_id}/usage", json={"uses": True})
    assert_refused(response, 422, "uses")
    license = (await client.get(f"/licensing/licenses/{license_id}")).json()
    assert license["used"] == 0


async def test_a_body_over_the_size_limit_is_413_before_it_is_read_whole(client: httpx.AsyncClient) -> None:
    huge_offer = b'{"asset_id": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    response = await client.post("/licensing/licenses", content=huge_offer, headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "body_too_large", response.json()
    assert response.json()["correlation_id"] == response.headers["X-Correlation-ID"]
    huge_batch = b"\n".join([b'{"report_id": "R"}'] * 1_000_000)  # 19 MB
    response = await client.post(
        "/compliance/partner-feed", params={"partner": "acme"}, content=huge_batch, headers={"Content-Type": "application/x-ndjson"}
    )
    assert response.status_code == 413, response.text
    assert "16777216 bytes" in response.json()["detail"]


async def test_a_body_that_streams_past_the_limit_without_saying_so_is_413(client: httpx.AsyncClient) -> None:
    async def chunks():  # no Content-Length: the limit must be counted as the body arrives
        for _ in range(40):
            yield b"a" * 65_536

    response = await client.post("/licensing/licenses", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "body_too_large" and "limit of 1048576 bytes" in response.json()["detail"]


async def test_the_acl_dead_letters_the_unreadable_partner_records_it_was_handed_with_reasons(
    client: httpx.AsyncClient, platform: Platform
) -> None:
    lines = b"\n".join([b"[" * 20_000 + b"]" * 20_000, b'{"report_id": "R-\xff\xfe", "license": "x"}', b"\xc3\x28 not text"])
    response = await client.post(
        "/compliance/partner-feed", params={"partner": "acme"}, content=lines, headers={"Content-Type": "application/x-ndjson"}
    )
    assert response.status_code == 202, response.text
    await platform.start(("consumers",))

    async def dead_letters() -> list[tuple[str, str]]:
        rows = await platform.store.fetch(
            "SELECT reason, error FROM tidings_dead_letters WHERE consumer = 'compliance.partner-feed' ORDER BY id"
        )
        return [(str(reason), str(error)) for reason, error in rows]

    async def all_dead() -> bool:
        return len(await dead_letters()) == 3

    assert await platform.settle(all_dead, timeout=20), await dead_letters()
    assert all(reason and error for reason, error in await dead_letters())
