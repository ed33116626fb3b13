"""Application layer of Licensing: command handlers, translators to contracts, and the ACL for searchable assets."""

from __future__ import annotations

from examples.licensing.contracts import contract_registry
from examples.licensing.licensing.application.asset_acl import register_command_for
from examples.licensing.licensing.application.handlers import register_handlers
from examples.licensing.licensing.application.translators import (
    purchase_confirmed,
    register_translators,
    usage_reported,
    usage_violation_detected,
)
from tidings.app import Application
from tidings.store import Store

__all__ = [
    "CONTEXT",
    "build_application",
    "purchase_confirmed",
    "register_command_for",
    "register_handlers",
    "register_translators",
    "usage_reported",
    "usage_violation_detected",
]

#: The bounded context's name: its Application's name and the ``source`` of its envelopes.
CONTEXT = "licensing"


def build_application(store: Store) -> Application:
    """Licensing's Application on ``store``: its command handlers and translators, reading every contract version."""
    app = Application(store, name=CONTEXT, registry=contract_registry())
    register_handlers(app)
    register_translators(app)
    return app
