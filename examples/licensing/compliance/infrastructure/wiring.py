"""Compliance built on a store: its application, both ACL consumers, the alerts feed and the HTTP routes."""

from __future__ import annotations

import functools

from examples.licensing.compliance.application import CONTEXT, compliance_application
from examples.licensing.compliance.infrastructure.alerts import ComplianceAlertsFeed, open_alerts
from examples.licensing.compliance.infrastructure.api import router
from examples.licensing.compliance.infrastructure.consumers import licensing_events_consumer, partner_feed_consumer
from examples.licensing.compliance.infrastructure.gateway import submit_partner_batch
from examples.licensing.compliance.infrastructure.tables import partner_reports
from examples.licensing.kernel import ContextParts, Settings
from tidings.store import Store

__all__ = ["build"]


def build(store: Store, settings: Settings = Settings()) -> ContextParts:
    """Compliance's parts on ``store``; the composition root attaches the broker and runs them.

    - ``consumers``: ``compliance.licensing-events`` on ``licensing.usage-violation-detected`` and
      ``licensing.license-purchase-confirmed``; ``compliance.partner-feed`` on ``compliance.partner_feed``.
    - ``projections``: ``compliance_alerts_feed`` (journal-fed), read with ``extras["alerts"](limit=100)``.
    - ``extras["partner_reports"](partner=None)``: the partner reports applied; ``extras["submit_partner_batch"]``
      is the gateway (``broker, records, partner=…``); ``extras["partner_feed_consumer"]`` its consumer.
    - ``router``: the HTTP routes, mounted under ``/compliance``; no saga runner (Compliance has no saga).
    """
    app = compliance_application(store)
    feed = partner_feed_consumer(app, settings, store)
    return ContextParts(
        name=CONTEXT,
        application=app,
        consumers=[licensing_events_consumer(app, settings, store), feed],
        # The projection decodes stored events with the application's registry.
        projections=[ComplianceAlertsFeed(app.registry)],
        saga_runner=None,
        router=router,
        extras={
            "alerts": functools.partial(open_alerts, store),
            "partner_reports": functools.partial(partner_reports, store),
            "submit_partner_batch": submit_partner_batch,
            "partner_feed_consumer": feed,
        },
    )
