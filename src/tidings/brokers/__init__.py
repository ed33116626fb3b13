"""Brokers: one small protocol, one module per broker, chosen by URL."""

from __future__ import annotations

import importlib
import os
from typing import Any

from tidings.brokers.base import (
    Broker,
    BrokerConfigurationError,
    BrokerError,
    BrokerUnavailable,
    Delivery,
    MessageRejected,
    OutgoingMessage,
    Subscription,
)
from tidings.messaging.redaction import redact_url
from tidings.store.base import Store

__all__ = [
    "Broker",
    "BrokerConfigurationError",
    "BrokerError",
    "BrokerUnavailable",
    "Delivery",
    "MessageRejected",
    "OutgoingMessage",
    "Subscription",
    "DEFAULT_BROKER_URL",
    "open_broker",
]

DEFAULT_BROKER_URL = "local:"

# scheme -> (module, the extra that installs its client library)
_MODULES = {
    "nats": ("tidings.brokers.nats", "nats"),
    "amqp": ("tidings.brokers.rabbitmq", "rabbitmq"),
    "amqps": ("tidings.brokers.rabbitmq", "rabbitmq"),
    "redis": ("tidings.brokers.redis", "redis"),
    "rediss": ("tidings.brokers.redis", "redis"),
    "kafka": ("tidings.brokers.kafka", "kafka"),
}


async def open_broker(url: str | None = None, *, store: Store | None = None, **options: Any) -> Broker:
    """Open and connect the broker named by ``url`` (or ``TIDINGS_BROKER_URL``, or ``local:``).

    ``local:`` needs the ``store`` whose log it uses; the others connect to their server and raise
    BrokerUnavailable if it cannot be reached. A URL or option no broker could accept raises
    BrokerConfigurationError (a ValueError) at once.
    """
    url = url or os.environ.get("TIDINGS_BROKER_URL") or DEFAULT_BROKER_URL
    scheme = url.split(":", 1)[0].lower()
    broker: Broker
    if scheme == "local":
        if store is None:
            raise ValueError("the local: broker keeps its log in the store; pass store=… to open_broker")
        from tidings.brokers.local import LocalBroker

        broker = LocalBroker(store, **options)
    elif scheme in _MODULES:
        module_name, extra = _MODULES[scheme]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise RuntimeError(f"{scheme}:// needs the {extra} extra: pip install 'tidings[{extra}]' ({exc})") from exc
        broker = module.from_url(url, **options)
    else:
        known = ", ".join(["local:"] + sorted(f"{s}://" for s in _MODULES))
        raise BrokerConfigurationError(f"unsupported broker URL {redact_url(url)!r}: use one of {known}")
    await broker.connect()
    return broker
