"""HTTP endpoints of Asset Processing: upload an asset, see where it stands, search the assets ready for search.

Errors are raised, not mapped here: the composition root's exception handlers turn a
ValidationError into 422 (naming the field), DomainError and ConcurrencyError into 409 and
AggregateNotFound into 404, and set the ``X-Correlation-ID`` header.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, Field

from examples.licensing.asset_processing.application import AWAITING_INDEX, AWAITING_METADATA, AssetProcessing
from examples.licensing.asset_processing.domain import Asset, UploadAsset
from examples.licensing.asset_processing.domain.commands import MAX_SIZE_BYTES, MAX_TITLE_LENGTH, MEDIA_TYPES
from examples.licensing.asset_processing.infrastructure.search_index import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_QUERY_LENGTH,
    SearchEntry,
    SearchQueries,
)
from examples.licensing.kernel import ContextParts
from examples.licensing.web import LINE, Integer, RequestBody, command_context, error_responses
from tidings.runtime.sagas import list_archived

__all__ = [
    "AssetMetadata",
    "AssetState",
    "SearchResult",
    "SearchResults",
    "UploadAccepted",
    "UploadAssetRequest",
    "router",
]

#: What GET /assets/{id} says of an asset whose processing ended: indexed and searchable, or stalled.
INDEXED = "indexed"
PROCESSING_OUTCOMES = {"completed": "complete", "compensated": "stalled"}


#: Longest owner id an upload may carry.
MAX_ID_LENGTH = 200
MediaType = Literal[tuple(sorted(MEDIA_TYPES))]  # type: ignore[valid-type]


class UploadAssetRequest(RequestBody):
    """The body of POST /assets: the fields of the UploadAsset command."""

    owner_id: str = Field(pattern=LINE, max_length=MAX_ID_LENGTH, examples=["ada"])
    title: str = Field(pattern=LINE, max_length=MAX_TITLE_LENGTH, examples=["Harbour at dawn"])
    media_type: MediaType = Field(examples=["image/jpeg"])
    size_bytes: Integer = Field(ge=1, le=MAX_SIZE_BYTES, examples=[2_400_000])
    checksum: str = Field(
        pattern="^[0-9a-f]{64}$",
        description="SHA-256 of the file, 64 lowercase hex characters",
        examples=["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],
    )


class UploadAccepted(BaseModel):
    """The answer to an accepted upload: the asset's id and the correlation id that traces its processing."""

    asset_id: str
    correlation_id: str


class AssetMetadata(BaseModel):
    """What the extractor read from an asset's file."""

    width: int
    height: int
    format: str
    camera_make: str | None = None
    camera_model: str | None = None
    lens_model: str | None = None
    iso: int | None = None
    focal_length_mm: float | None = None
    f_number: float | None = None
    exposure_time: str | None = None
    captured_at: datetime | None = None


class AssetState(BaseModel):
    """An asset as Asset Processing knows it, with how far its processing got."""

    asset_id: str
    owner_id: str
    title: str
    media_type: str
    size_bytes: int
    checksum: str
    version: int
    #: awaiting_metadata, awaiting_index or indexed (the aggregate's own progress).
    stage: str
    #: in_progress, complete or stalled (the AssetProcessing saga's outcome).
    processing: str
    #: Whether the SearchIndex read model has it (it may lag a moment behind "complete").
    searchable: bool
    metadata: AssetMetadata | None = None
    keywords: list[str] = []


class SearchResult(BaseModel):
    """One asset in the search index."""

    asset_id: str
    owner_id: str
    title: str
    media_type: str
    size_bytes: int
    width: int
    height: int
    format: str
    camera_make: str | None = None
    camera_model: str | None = None
    captured_at: datetime | None = None
    keywords: list[str] = []
    ready_at: datetime


class SearchResults(BaseModel):
    """The answer to a search: the query as understood and the matching assets, by title."""

    query: str
    count: int
    results: list[SearchResult]


def router(parts: ContextParts) -> APIRouter:
    """The Asset Processing endpoints over ``parts`` (its application and its ``extras["search"]`` queries)."""
    app = parts.application
    search: SearchQueries = parts.extras["search"]
    api = APIRouter(tags=["asset processing"])

    @api.post("/assets", status_code=202, response_model=UploadAccepted, responses=error_responses(400, 404, 409, 413))
    async def upload_asset(body: UploadAssetRequest, request: Request, response: Response) -> UploadAccepted:
        """Upload an asset; its metadata extraction, indexing and search listing follow asynchronously."""
        command = UploadAsset(**body.model_dump())
        result = await app.handle(command, context=command_context(request))
        response.headers["Location"] = str(request.url_for("get_asset", asset_id=command.asset_id))
        return UploadAccepted(asset_id=command.asset_id, correlation_id=result.correlation_id)

    @api.get("/assets/{asset_id}", response_model=AssetState, name="get_asset", responses=error_responses(404))
    async def get_asset(
        asset_id: Annotated[str, Path(pattern=LINE, max_length=MAX_ID_LENGTH)], request: Request
    ) -> AssetState:
        """An asset's state and how far its processing got; 404 for an unknown id (or another tenant's)."""
        tenant = command_context(request).tenant
        asset = await app.load(Asset, asset_id, tenant=tenant)
        entry = await search.get(asset_id, tenant=tenant)
        return _state(asset, await _processing(parts, asset_id), entry is not None)

    @api.get("/search", response_model=SearchResults, responses=error_responses())
    async def search_assets(
        q: str = Query(
            "",
            max_length=MAX_QUERY_LENGTH,
            pattern="^[^\\x00-\\x1f\\x7f]*$",
            description="words that must all appear (title, keywords, owner, format, camera)",
        ),
        limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
        *,
        request: Request,
    ) -> SearchResults:
        """The caller's assets ready for search whose text contains every word of ``q`` (all of them for an empty ``q``)."""
        entries = await search.search(q, limit=limit, tenant=command_context(request).tenant)
        return SearchResults(query=q, count=len(entries), results=[_result(entry) for entry in entries])

    return api


async def _processing(parts: ContextParts, asset_id: str) -> str:
    archived = await list_archived(parts.application.store, saga_type=AssetProcessing.saga_type, key=asset_id, limit=1)
    return PROCESSING_OUTCOMES.get(archived[0].outcome, archived[0].outcome) if archived else "in_progress"


def _state(asset: Asset, processing: str, searchable: bool) -> AssetState:
    metadata = asset.metadata
    if metadata is None:
        stage = AWAITING_METADATA
    elif not asset.indexed:
        stage = AWAITING_INDEX
    else:
        stage = INDEXED
    return AssetState(
        asset_id=asset.id,
        owner_id=asset.owner_id,
        title=asset.title,
        media_type=asset.media_type,
        size_bytes=asset.size_bytes,
        checksum=asset.checksum,
        version=asset.version,
        stage=stage,
        processing=processing,
        searchable=searchable,
        metadata=None
        if metadata is None
        else AssetMetadata(
            width=metadata.width,
            height=metadata.height,
            format=metadata.format,
            camera_make=metadata.camera_make,
            camera_model=metadata.camera_model,
            lens_model=metadata.lens_model,
            iso=metadata.iso,
            focal_length_mm=metadata.focal_length_mm,
            f_number=metadata.f_number,
            exposure_time=metadata.exposure_time,
            captured_at=metadata.captured_at,
        ),
        keywords=list(asset.keywords),
    )


def _result(entry: SearchEntry) -> SearchResult:
    return SearchResult(
        asset_id=entry.asset_id,
        owner_id=entry.owner_id,
        title=entry.title,
        media_type=entry.media_type,
        size_bytes=entry.size_bytes,
        width=entry.width,
        height=entry.height,
        format=entry.format,
        camera_make=entry.camera_make,
        camera_model=entry.camera_model,
        captured_at=entry.captured_at,
        keywords=list(entry.keywords),
        ready_at=entry.ready_at,
    )
