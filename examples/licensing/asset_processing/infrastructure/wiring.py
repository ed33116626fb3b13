"""Asset Processing, built on a store: its application, workers, saga runner, search queries and router."""

from __future__ import annotations

from examples.licensing.asset_processing.application import CONTEXT, build_application, internal_registry, processing_saga
from examples.licensing.asset_processing.infrastructure.api import router
from examples.licensing.asset_processing.infrastructure.search_index import SearchQueries
from examples.licensing.asset_processing.infrastructure.workers import (
    indexer,
    metadata_extractor,
    processing_feed,
    search_index_feed,
)
from examples.licensing.kernel import ContextParts, Settings
from tidings.runtime import SagaRunner
from tidings.store import Store

__all__ = ["build"]


def build(store: Store, settings: Settings | None = None) -> ContextParts:
    """The parts of Asset Processing on ``store``; the composition root attaches a broker to the consumers and runs them.

    - ``consumers``: the metadata extractor and the indexer (workers on ``asset_processing.internal``),
      the AssetProcessing saga's feed (same topic), and the SearchIndex's feed
      (``asset_processing.asset-ready-for-search``).
    - ``saga_runner``: runs AssetProcessing; give it a ``Scheduler`` for the stall deadline.
    - ``projections``: none from the journal — the SearchIndex is fed by its consumer.
    - ``extras["search"]``: :class:`SearchQueries` (``search(text, limit=)``, ``get(asset_id)``, ``count()``).
    """
    settings = settings or Settings()
    app = build_application(store)
    runner = SagaRunner(store, [processing_saga(settings.stall_after)], context=CONTEXT, registry=internal_registry())
    search = SearchQueries(store)
    return ContextParts(
        name=CONTEXT,
        application=app,
        consumers=[
            metadata_extractor(app, settings),
            indexer(app, settings),
            processing_feed(runner, store, settings),
            search_index_feed(search, settings),
        ],
        projections=[],
        saga_runner=runner,
        router=router,
        extras={"search": search},
    )
