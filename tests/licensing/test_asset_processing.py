"""Asset Processing, application and infrastructure: uploads, workers, the AssetProcessing saga, SearchIndex, API.

The saga is specified given/when/then with the test kit; the rest runs for real: an in-process
platform on a SQLite file with the local broker (the store's own log) — Application → outbox →
Relay → Consumers → saga runner and Scheduler → outbox → Relay → the SearchIndex's consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import msgspec
import pytest
from fastapi import FastAPI, Request

from examples.licensing.asset_processing.application import (
    AWAITING_INDEX,
    AWAITING_METADATA,
    COMPLETE,
    INTERNAL_TOPIC,
    STALLED,
    AssetProcessing,
    ProcessingOverdue,
    keywords_for,
    processing_saga,
)
from examples.licensing.asset_processing.application import internal
from examples.licensing.asset_processing.domain import Asset, ExtractMetadata, UploadAsset, asset_id_for
from examples.licensing.asset_processing.infrastructure.metadata_reader import UnreadableFile, read_metadata
from examples.licensing.asset_processing.infrastructure.search_index import search_terms
from examples.licensing.asset_processing.infrastructure.wiring import build
from examples.licensing.asset_processing.infrastructure.workers import EXTRACTOR, INDEXER, PROCESSING, SEARCH_INDEX
from examples.licensing.contracts import (
    ASSET_PROCESSING_STALLED_TOPIC,
    ASSET_READY_FOR_SEARCH_TOPIC,
    AssetProcessingStalled,
    AssetReadyForSearch,
)
from examples.licensing.kernel import ContextParts, Settings
from tidings.brokers.base import OutgoingMessage
from tidings.brokers.local import LocalBroker
from tidings.domain import AggregateNotFound, DomainError, ValidationError
from tidings.runtime import Deadline, DeadLetters, Relay, Scheduler
from tidings.runtime.sagas import list_archived
from tidings.store import Store, open_store
from tidings.testing import saga_scenario

OWNER = "ada"
CAPTURED = datetime(2024, 5, 1, 6, 12, tzinfo=UTC)


def checksum_of(text: str) -> str:
    """A valid SHA-256 checksum, different for each text."""
    return hashlib.sha256(text.encode()).hexdigest()


def upload(title: str, owner: str = OWNER, media_type: str = "image/jpeg") -> UploadAsset:
    """An UploadAsset whose checksum is derived from the title (so each title is a different file)."""
    return UploadAsset(owner_id=owner, title=title, media_type=media_type, size_bytes=2_400_000, checksum=checksum_of(title))


def uploaded(title: str, asset_id: str = "a-1") -> internal.AssetUploaded:
    return internal.AssetUploaded(
        asset_id=asset_id, owner_id=OWNER, title=title, media_type="image/jpeg", size_bytes=2_400_000, checksum=checksum_of(title)
    )


EXTRACTED = internal.MetadataExtracted(
    asset_id="a-1", width=6000, height=4000, format="jpeg", camera_make="Fujifilm", camera_model="X-T5", captured_at=CAPTURED
)
INDEXED = internal.AssetIndexed(asset_id="a-1", keywords=("harbour", "dawn", "jpeg", "fujifilm"))
READY = AssetReadyForSearch(
    asset_id="a-1",
    owner_id=OWNER,
    title="Harbour at dawn",
    media_type="image/jpeg",
    size_bytes=2_400_000,
    width=6000,
    height=4000,
    format="jpeg",
    camera_make="Fujifilm",
    camera_model="X-T5",
    captured_at=CAPTURED,
    keywords=("harbour", "dawn", "jpeg", "fujifilm"),
)


# -- the AssetProcessing saga, given / when / then ---------------------------------------------------


def test_an_upload_starts_the_saga_awaiting_metadata_with_a_stall_deadline() -> None:
    saga_scenario(AssetProcessing).when(uploaded("Harbour at dawn")).then_schedules(
        Deadline(timedelta(seconds=30), ProcessingOverdue(asset_id="a-1", after_seconds=30.0))
    ).then_sends().then_publishes().then_state(stage=AWAITING_METADATA, title="Harbour at dawn", owner_id=OWNER).then_running()


def test_extracted_metadata_moves_the_saga_to_awaiting_index() -> None:
    saga_scenario(AssetProcessing).given(uploaded("Harbour at dawn")).when(EXTRACTED).then_nothing().then_state(
        stage=AWAITING_INDEX, width=6000, height=4000, format="jpeg"
    ).then_running()


def test_indexing_after_metadata_completes_the_saga_and_announces_the_asset_ready_for_search() -> None:
    outcome = (
        saga_scenario(AssetProcessing)
        .given(uploaded("Harbour at dawn"), EXTRACTED)
        .when(INDEXED)
        .then_publishes(READY)
        .then_cancels(ProcessingOverdue)
        .then_sends()
        .then_state(stage=COMPLETE)
        .then_completed()
    )
    assert outcome.pending == []  # the stall deadline went with the saga


def test_an_index_that_overtakes_the_metadata_waits_for_it_and_then_completes() -> None:
    # Given the indexer's fact arrived first (no broker promise is needed for the saga to be right)
    waiting = saga_scenario(AssetProcessing).given(uploaded("Harbour at dawn"))
    waiting.when(INDEXED).then_nothing().then_state(stage=AWAITING_METADATA, indexed=True).then_running()

    # When the metadata arrives after it / then the asset is announced with both
    waiting.given(INDEXED).when(EXTRACTED).then_publishes(READY).then_completed()


def test_the_deadline_while_awaiting_metadata_publishes_stalled_and_ends_the_saga() -> None:
    outcome = (
        saga_scenario(AssetProcessing)
        .given(uploaded("Corrupt scan"))
        .when_due(ProcessingOverdue)
        .then_publishes(AssetProcessingStalled(asset_id="a-1", owner_id=OWNER, stage=AWAITING_METADATA, waited_seconds=30))
        .then_state(stage=STALLED)
        .then_compensated(reason="stalled awaiting_metadata")
    )
    assert outcome.pending == []


def test_the_deadline_while_awaiting_index_says_the_asset_stalled_there() -> None:
    saga_scenario(AssetProcessing).given(uploaded("Harbour at dawn"), EXTRACTED).when_due(ProcessingOverdue).then_publishes(
        AssetProcessingStalled(asset_id="a-1", owner_id=OWNER, stage=AWAITING_INDEX, waited_seconds=30)
    ).then_compensated()


def test_a_message_for_an_asset_whose_saga_is_not_running_is_ignored() -> None:
    saga_scenario(AssetProcessing).when(EXTRACTED).then_ignored()


def test_the_configured_saga_waits_stall_after_and_rounds_the_wait_up_to_whole_seconds() -> None:
    saga = processing_saga(2.5)
    assert saga.saga_type == AssetProcessing.saga_type  # the same saga, stored under the same type
    saga_scenario(saga).when(uploaded("Dunes")).then_schedules(
        Deadline(timedelta(seconds=2.5), ProcessingOverdue(asset_id="a-1", after_seconds=2.5))
    )
    saga_scenario(saga).given(uploaded("Dunes")).when_due(ProcessingOverdue).then_publishes(
        AssetProcessingStalled(asset_id="a-1", owner_id=OWNER, stage=AWAITING_METADATA, waited_seconds=3)
    )
    with pytest.raises(ValueError, match="stall_after must be a positive number"):
        processing_saga(0)


# -- the pretend metadata reader and the indexing policy ---------------------------------------------


def test_the_metadata_read_from_an_upload_is_the_same_every_time_and_valid() -> None:
    # Given one upload / when it is read twice / then both reads agree (a retry is not a new fact)
    first, second = read_metadata(uploaded("Harbour at dawn")), read_metadata(uploaded("Harbour at dawn"))
    assert first == second
    first.validate()  # no ValidationError: the command the extractor sends is always acceptable
    assert first.format == "jpeg" and first.camera_make and first.captured_at and first.captured_at.tzinfo
    # …and another file reads differently
    assert read_metadata(uploaded("Dunes at noon")) != first


def test_a_video_gets_video_dimensions_and_its_container_format() -> None:
    video = replace(uploaded("Surf"), media_type="video/quicktime")
    metadata = read_metadata(video)
    assert metadata.format == "mov"
    assert (metadata.width, metadata.height) in {(1920, 1080), (3840, 2160), (4096, 2160)}


def test_a_corrupt_file_cannot_be_read() -> None:
    with pytest.raises(UnreadableFile, match="cannot be parsed"):
        read_metadata(uploaded("A CORRUPT negative"))


def test_keywords_are_the_title_words_without_stopwords_then_format_and_camera_each_once() -> None:
    assert keywords_for("The Harbour at Dawn, harbour lights", "jpeg", "Fujifilm") == (
        "harbour",
        "dawn",
        "lights",
        "jpeg",
        "fujifilm",
    )
    assert keywords_for("", "png") == ("png",)


def test_search_terms_are_lower_cased_words_each_once() -> None:
    assert search_terms("  Harbour DAWN harbour ") == ["harbour", "dawn"]
    assert search_terms("   ") == []


# -- the application --------------------------------------------------------------------------------


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await open_store(f"sqlite:///{tmp_path / 'assets.db'}")
    try:
        yield store
    finally:
        await store.close()


async def test_an_upload_publishes_the_internal_message_keyed_by_the_asset_id(sqlite_store: Store) -> None:
    app = build(sqlite_store).application
    command = upload("Harbour at dawn")

    result = await app.handle(command)

    assert result.value == command.asset_id == asset_id_for(OWNER, command.checksum)
    outbox = await sqlite_store.read_outbox()
    assert [(row.topic, row.event_type, row.partition_key) for row in outbox] == [
        (INTERNAL_TOPIC, "asset_processing.internal.AssetUploaded", command.asset_id)
    ]
    assert msgspec.json.decode(outbox[0].payload)["title"] == "Harbour at dawn"


async def test_a_second_upload_of_the_same_file_by_the_same_owner_is_refused(sqlite_store: Store) -> None:
    app = build(sqlite_store).application
    await app.handle(upload("Harbour at dawn"))
    journal_before = await sqlite_store.count("journal")

    with pytest.raises(DomainError, match="duplicate"):
        await app.handle(replace(upload("Harbour at dawn"), title="Same file, new title"))

    assert await sqlite_store.count("journal") == journal_before  # nothing written for the refused upload
    # The same file by another owner is another asset.
    other = await app.handle(upload("Harbour at dawn", owner="bob"))
    assert other.value != asset_id_for(OWNER, checksum_of("Harbour at dawn"))


async def test_an_upload_with_a_malformed_checksum_names_the_field(sqlite_store: Store) -> None:
    app = build(sqlite_store).application
    with pytest.raises(ValidationError) as refused:
        await app.handle(replace(upload("Dunes"), checksum="not-a-digest"))
    assert refused.value.field == "checksum"


async def test_metadata_for_an_unknown_asset_is_not_found(sqlite_store: Store) -> None:
    app = build(sqlite_store).application
    with pytest.raises(AggregateNotFound):
        await app.handle(ExtractMetadata(asset_id="nope", width=1, height=1, format="png"))


# -- the platform in one process: SQLite + local broker ----------------------------------------------

FAST = Settings(stall_after=30.0, immediate_retries=1, delayed_retries=1, retry_base=0.05)


@dataclass
class Platform:
    """Asset Processing running in this test: relay, its consumers and the scheduler, over one store."""

    store: Store
    parts: ContextParts
    broker: LocalBroker
    scheduler: Scheduler
    tasks: list[asyncio.Task[None]]
    stop: asyncio.Event

    @property
    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=api_app(self.parts)), base_url="http://test")

    async def until(self, check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
        """Wait until ``check()`` holds; fail with ``what`` after ``timeout`` s, or at once if a worker crashed."""
        deadline = time.monotonic() + timeout
        while not await check():
            for task in self.tasks:
                if task.done():
                    task.result()
                    pytest.fail(f"{task.get_name()} stopped before {what}")
            if time.monotonic() > deadline:
                stats = {consumer.name: consumer.stats for consumer in self.parts.consumers}
                pytest.fail(f"timed out after {timeout} s waiting until {what}; consumers: {stats}")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def platform(store: Store, settings: Settings = FAST) -> AsyncIterator[Platform]:
    parts = build(store, settings)
    broker = LocalBroker(store, poll_interval=0.02)
    assert parts.saga_runner is not None
    scheduler = Scheduler(parts.saga_runner, poll_interval=0.05)
    stop = asyncio.Event()
    runs = [(consumer.name, consumer.attach(store, broker).run(stop)) for consumer in parts.consumers]
    runs += [("relay", Relay(store, broker, idle_wait=0.02).run(stop)), ("scheduler", scheduler.run(stop))]
    tasks = [asyncio.get_running_loop().create_task(run, name=name) for name, run in runs]
    try:
        yield Platform(store, parts, broker, scheduler, tasks, stop)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)


def api_app(parts: ContextParts) -> FastAPI:
    """The context's router under /asset_processing, with a stand-in for the root's correlation middleware."""
    app = FastAPI()

    @app.middleware("http")
    async def correlation(request: Request, call_next):  # type: ignore[no-untyped-def]
        request.state.correlation_id = request.headers.get("X-Correlation-ID")
        return await call_next(request)

    assert parts.router is not None
    app.include_router(parts.router(parts), prefix="/asset_processing")
    return app


async def outbox_of(store: Store, topic: str) -> list[tuple[dict, dict]]:
    """(envelope, payload) of every outbox row published on ``topic``."""
    rows = await store.read_outbox(limit=10_000)
    return [(msgspec.json.decode(r.envelope), msgspec.json.decode(r.payload)) for r in rows if r.topic == topic]


async def test_an_uploaded_asset_is_extracted_indexed_and_becomes_searchable(store: Store) -> None:
    # On SQLite and on PostgreSQL (the conftest's ``store``), both with the local broker.
    async with platform(store) as running, running.client as client:
        search = running.parts.extras["search"]

        # Given two uploads through the API, one in a correlation the caller chose
        accepted = await client.post(
            "/asset_processing/assets",
            json={"owner_id": OWNER, "title": "Harbour at dawn", "media_type": "image/jpeg", "size_bytes": 2_400_000,
                  "checksum": checksum_of("Harbour at dawn")},
            headers={"X-Correlation-ID": "corr-harbour"},
        )  # fmt: skip
        second = await client.post(
            "/asset_processing/assets",
            json={"owner_id": "bob", "title": "Dunes at noon", "media_type": "image/png", "size_bytes": 900_000,
                  "checksum": checksum_of("Dunes at noon")},
        )  # fmt: skip
        assert accepted.status_code == second.status_code == 202
        harbour = accepted.json()
        assert harbour == {"asset_id": asset_id_for(OWNER, checksum_of("Harbour at dawn")), "correlation_id": "corr-harbour"}
        assert accepted.headers["Location"].endswith(f"/asset_processing/assets/{harbour['asset_id']}")

        # When the workers, the saga and the search index's consumer have run
        await running.until(lambda: _count_is(search.count(), 2), "both assets are in the SearchIndex")

        # Then the asset was extracted and indexed, its saga completed, and AssetReadyForSearch left
        state = (await client.get(f"/asset_processing/assets/{harbour['asset_id']}")).json()
        assert (state["stage"], state["processing"], state["searchable"]) == ("indexed", "complete", True)
        assert state["metadata"]["format"] == "jpeg" and state["keywords"][:2] == ["harbour", "dawn"]
        ready = await outbox_of(store, ASSET_READY_FOR_SEARCH_TOPIC)
        assert sorted(payload["title"] for _, payload in ready) == ["Dunes at noon", "Harbour at dawn"]
        envelope, payload = next((e, p) for e, p in ready if p["asset_id"] == harbour["asset_id"])
        # …in the upload's correlation, so one trace leads from the request to the announcement
        assert envelope["correlation_id"] == "corr-harbour" and envelope["source"] == "asset_processing"
        assert payload["width"] == state["metadata"]["width"] and payload["keywords"] == state["keywords"]
        archived = await list_archived(store, saga_type="AssetProcessing")
        assert sorted(a.outcome for a in archived) == ["completed", "completed"]
        assert await _open_deadlines(store) == 0  # completing cancelled the stall deadlines

        # …and the read model answers searches by any word, all words required
        found = (await client.get("/asset_processing/search", params={"q": "HARBOUR fujifilm"})).json()
        assert found["count"] == len(found["results"])
        assert [r["asset_id"] for r in (await client.get("/asset_processing/search", params={"q": "harbour"})).json()["results"]] == [
            harbour["asset_id"]
        ]
        everything = (await client.get("/asset_processing/search")).json()
        assert [r["title"] for r in everything["results"]] == ["Dunes at noon", "Harbour at dawn"]
        assert (await client.get("/asset_processing/search", params={"q": "harbour noon"})).json()["count"] == 0
        assert not await DeadLetters(store).list()


async def test_a_corrupt_asset_is_dead_lettered_with_its_reason_and_its_saga_stalls(sqlite_store: Store) -> None:
    settings = replace(FAST, stall_after=1.0)
    async with platform(sqlite_store, settings) as running:
        app = running.parts.application

        # Given a corrupt file and a good one uploaded together
        corrupt = (await app.handle(upload("Corrupt negative scan"))).value
        good = (await app.handle(upload("Harbour at dawn"))).value

        # When the extractor has retried the corrupt one and given up
        await running.until(lambda: _dead_letters_of(sqlite_store, EXTRACTOR, 1), "the corrupt upload is dead-lettered")
        [dead] = await DeadLetters(sqlite_store).list(consumer=EXTRACTOR)

        # Then it is parked with the reason, after the configured attempts, and nothing else died
        assert dead.key == corrupt and dead.event_type == "asset_processing.internal.AssetUploaded"
        assert "UnreadableFile" in dead.error and "cannot be parsed" in dead.error
        assert dead.reason.startswith("gave up after") and dead.attempts == 1 + settings.immediate_retries + settings.delayed_retries
        # …the good asset still went all the way (poison never blocks the others)
        search = running.parts.extras["search"]
        await running.until(lambda: _count_is(search.count(), 1), "the good asset is searchable")
        assert (await search.get(good)) is not None and (await search.get(corrupt)) is None

        # …and after stall_after the scheduler fires the deadline: AssetProcessingStalled, saga ended
        await running.until(lambda: _archived_as(sqlite_store, corrupt, "compensated"), "the corrupt asset's saga stalls")
        stalled = await outbox_of(sqlite_store, ASSET_PROCESSING_STALLED_TOPIC)
        assert [payload for _, payload in stalled] == [
            {"asset_id": corrupt, "owner_id": OWNER, "stage": AWAITING_METADATA, "waited_seconds": 1}
        ]
        async with running.client as client:
            state = (await client.get(f"/asset_processing/assets/{corrupt}")).json()
        assert (state["stage"], state["processing"], state["searchable"]) == (AWAITING_METADATA, "stalled", False)
        assert sorted(a.outcome for a in await list_archived(sqlite_store, saga_type="AssetProcessing")) == [
            "compensated",
            "completed",
        ]
        assert await DeadLetters(sqlite_store).list(consumer=INDEXER) == []


async def test_garbage_on_the_internal_topic_is_dead_lettered_with_a_reason_and_processing_goes_on(sqlite_store: Store) -> None:
    async with platform(sqlite_store) as running:
        # Given a message of a type nobody declared, and one that is not even JSON, on the internal topic
        good = await running.parts.application.handle(upload("Harbour at dawn"))
        await running.broker.publish(
            [
                _foreign("asset_processing.internal.AssetTeleported", b'{"asset_id": "x"}', "garbage-1"),
                _foreign("asset_processing.internal.AssetUploaded", b"\xff not json", "garbage-2"),
            ]
        )

        # When every internal consumer has seen them / then each dead-letters both, with the reason
        for consumer in (EXTRACTOR, INDEXER, PROCESSING):
            await running.until(lambda c=consumer: _dead_letters_of(sqlite_store, c, 2), f"{consumer} dead-letters the garbage")
        letters = await DeadLetters(sqlite_store).list(consumer=PROCESSING)
        assert {letter.event_id: letter.reason for letter in letters} == {
            "garbage-1": "not retryable",
            "garbage-2": "not retryable",
        }
        errors = " | ".join(letter.error for letter in letters)
        assert "UnknownMessageType" in errors and "MalformedMessage" in errors
        # …and the good upload still became searchable
        search = running.parts.extras["search"]
        await running.until(lambda: _count_is(search.count(), 1), "the good asset is searchable")
        assert await search.get(good.value) is not None
        assert await DeadLetters(sqlite_store).list(consumer=SEARCH_INDEX) == []


def _foreign(event_type: str, payload: bytes, event_id: str) -> OutgoingMessage:
    headers = {
        "tidings-event_id": event_id,
        "tidings-event_type": event_type,
        "tidings-schema_version": "1",
        "tidings-occurred_at": datetime.now(UTC).isoformat(),
        "tidings-correlation_id": event_id,
    }
    # A key of its own each: on one key the second would be parked behind the first (held), unread.
    return OutgoingMessage(topic=INTERNAL_TOPIC, key=event_id, partition=0, event_id=event_id, headers=headers, payload=payload)


async def _count_is(count: Awaitable[int], expected: int) -> bool:
    return await count == expected


async def _dead_letters_of(store: Store, consumer: str, expected: int) -> bool:
    return len(await DeadLetters(store).list(consumer=consumer)) >= expected


async def _archived_as(store: Store, key: str, outcome: str) -> bool:
    archived = await list_archived(store, saga_type="AssetProcessing", key=key)
    return bool(archived) and archived[0].outcome == outcome


async def _open_deadlines(store: Store) -> int:
    rows = await store.fetch("SELECT count(*) FROM tidings_saga_deadlines WHERE fired_at IS NULL AND cancelled_at IS NULL")
    return int(rows[0][0])


# -- the API's errors (the composition root maps them to 422/409/404) ------------------------------


async def test_the_api_raises_what_the_root_maps_to_409_422_and_404_and_pydantic_rejects_wrong_types(
    sqlite_store: Store,
) -> None:
    parts = build(sqlite_store, FAST)
    body = {"owner_id": OWNER, "title": "Dunes", "media_type": "image/png", "size_bytes": 10, "checksum": checksum_of("Dunes")}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api_app(parts)), base_url="http://test") as client:
        assert (await client.post("/asset_processing/assets", json=body)).status_code == 202

        # A duplicate upload is the aggregate's DomainError (→ 409)
        with pytest.raises(DomainError, match="duplicate"):
            await client.post("/asset_processing/assets", json=body)
        # A value outside the documented ones never reaches the command: FastAPI answers 422 naming the field
        unknown_type = await client.post("/asset_processing/assets", json={**body, "media_type": "text/plain"})
        assert unknown_type.status_code == 422 and unknown_type.json()["detail"][0]["loc"] == ["body", "media_type"]
        # An unknown id is AggregateNotFound (→ 404)
        with pytest.raises(AggregateNotFound):
            await client.get("/asset_processing/assets/no-such-asset")
        # A wrong type never reaches the command: FastAPI answers 422 naming the field
        wrong = await client.post("/asset_processing/assets", json={**body, "size_bytes": "big"})
        assert wrong.status_code == 422 and wrong.json()["detail"][0]["loc"] == ["body", "size_bytes"]
        # A search limit out of range is refused the same way
        assert (await client.get("/asset_processing/search", params={"limit": 0})).status_code == 422

        # And the asset that was accepted is there, waiting for its metadata (no workers run here)
        asset_id = asset_id_for(OWNER, checksum_of("Dunes"))
        state = (await client.get(f"/asset_processing/assets/{asset_id}")).json()
        assert (state["stage"], state["processing"], state["searchable"], state["version"]) == (
            AWAITING_METADATA,
            "in_progress",
            False,
            1,
        )
    loaded = await parts.application.load(Asset, asset_id)
    assert loaded.title == "Dunes"
