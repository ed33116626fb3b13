"""The workers of Asset Processing, each a Consumer: extractor, indexer, the saga's feed, and the search index's.

Each consumer has a store and no broker; the composition root attaches the broker
(``consumer.attach(store, broker)``) and runs them. The internal topic's consumers read every
internal message type (so the ones they do not handle are skipped, not dead-lettered as unknown),
and anything else on the topic is garbage that goes to the dead letters with its reason.
"""

from __future__ import annotations

import asyncio

from examples.licensing.asset_processing.application import CONTEXT, INTERNAL_TOPIC, internal, internal_registry, keywords_for
from examples.licensing.asset_processing.domain import Asset, IndexAsset
from examples.licensing.asset_processing.infrastructure.metadata_reader import read_metadata
from examples.licensing.asset_processing.infrastructure.search_index import SearchQueries
from examples.licensing.contracts import ASSET_READY_FOR_SEARCH_TOPIC, AssetReadyForSearch, contract_registry
from examples.licensing.kernel import Settings
from tidings.app import Application
from tidings.runtime import Consumer, HandlerContext, Retries, SagaRunner
from tidings.runtime.backoff import Backoff
from tidings.store import Store

__all__ = [
    "EXTRACTOR",
    "INDEXER",
    "PROCESSING",
    "SEARCH_INDEX",
    "indexer",
    "metadata_extractor",
    "processing_feed",
    "retries_of",
    "search_index_feed",
]

#: Consumer names (broker groups, inboxes and dead letters are kept under them).
EXTRACTOR = f"{CONTEXT}.metadata-extractor"
INDEXER = f"{CONTEXT}.indexer"
PROCESSING = f"{CONTEXT}.processing-saga"
SEARCH_INDEX = f"{CONTEXT}.search-index"

# Delayed retries back off exponentially from retry_base; the cap only keeps a huge count sane.
_BACKOFF_CAP = 30.0


def retries_of(settings: Settings) -> Retries:
    """The platform's retry policy as a consumer's Retries."""
    return Retries(
        immediate=settings.immediate_retries,
        delayed=settings.delayed_retries,
        backoff=Backoff(settings.retry_base, max(settings.retry_base, _BACKOFF_CAP)),
    )


def _internal_consumer(name: str, store: Store, settings: Settings) -> Consumer:
    return Consumer(
        name, store, topics=[INTERNAL_TOPIC], registry=internal_registry(), retries=retries_of(settings), shards=settings.shards
    )


def metadata_extractor(app: Application, settings: Settings) -> Consumer:
    """Reads each uploaded asset's metadata (slowly, as ``extraction_delay`` says) and runs ExtractMetadata."""
    consumer = _internal_consumer(EXTRACTOR, app.store, settings)

    @consumer.handler(internal.AssetUploaded)
    async def extract(event: internal.AssetUploaded, ctx: HandlerContext) -> None:
        if settings.extraction_delay > 0:
            # The pretend reader is slow. The consumer runs handlers inside its transaction, so
            # on SQLite this wait holds the store's write lock: keep the delay short there.
            await asyncio.sleep(settings.extraction_delay)
        # A corrupt file raises UnreadableFile: retried (storage might have hiccuped), then
        # dead-lettered with that error as the reason; the asset's saga stalls meanwhile.
        await ctx.handle(app, read_metadata(event))

    return consumer


def indexer(app: Application, settings: Settings) -> Consumer:
    """Indexes each asset whose metadata was extracted, under keywords from its title, format and camera."""
    consumer = _internal_consumer(INDEXER, app.store, settings)

    @consumer.handler(internal.MetadataExtracted)
    async def index(event: internal.MetadataExtracted, ctx: HandlerContext) -> None:
        # The title is the aggregate's, not the event's: read it in this transaction from this
        # context's own store (a retry of a command never needs another context's data).
        asset = await app.load(Asset, event.asset_id)
        keywords = keywords_for(asset.title, event.format, event.camera_make)
        await ctx.handle(app, IndexAsset(asset_id=event.asset_id, keywords=keywords))

    return consumer


def processing_feed(runner: SagaRunner, store: Store, settings: Settings) -> Consumer:
    """Feeds the AssetProcessing saga the internal messages of each asset, in the consumer's transaction."""
    consumer = _internal_consumer(PROCESSING, store, settings)
    for message_type, deliver in runner.routes().items():
        consumer.route(message_type, deliver)
    return consumer


def search_index_feed(search: SearchQueries, settings: Settings) -> Consumer:
    """Applies every AssetReadyForSearch to the SearchIndex read model, exactly once each."""
    consumer = Consumer(
        SEARCH_INDEX,
        search.store,
        topics=[ASSET_READY_FOR_SEARCH_TOPIC],
        registry=contract_registry(),
        retries=retries_of(settings),
        shards=settings.shards,
    )
    consumer.route(AssetReadyForSearch, search.apply)
    return consumer
