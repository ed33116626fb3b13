"""Licensing built on a store: its application, the ACL consumer, the usage-by-day projection and the HTTP routes."""

from __future__ import annotations

from examples.licensing.kernel import ContextParts, Settings
from examples.licensing.licensing.application import CONTEXT, build_application
from examples.licensing.licensing.infrastructure.api import router
from examples.licensing.licensing.infrastructure.asset_consumer import asset_acl_consumer
from examples.licensing.licensing.infrastructure.usage_by_day import LicenseUsageByDay, usage_by_day_query
from tidings.store import Store

__all__ = ["build"]


def build(store: Store, settings: Settings = Settings()) -> ContextParts:
    """Licensing's parts on ``store``; the composition root attaches the broker and runs them.

    - ``consumers``: ``licensing.asset-acl`` on ``asset_processing.asset-ready-for-search``.
    - ``projections``: ``licensing.LicenseUsageByDay`` (journal-fed), read with ``extras["usage_by_day"]``.
    - ``router``: the HTTP routes, mounted under ``/licensing``; no saga runner (Licensing has no saga).
    """
    app = build_application(store)
    # The projection decodes stored events with the application's registry (its upcasters too).
    usage = LicenseUsageByDay(app.registry)
    return ContextParts(
        name=CONTEXT,
        application=app,
        consumers=[asset_acl_consumer(app, settings)],
        projections=[usage],
        saga_runner=None,
        router=router,
        extras={"usage_by_day": usage_by_day_query(store, usage)},
    )
