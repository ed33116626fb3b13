"""OpenTelemetry for tidings: spans across command → outbox → relay → broker → consumer, and flow metrics.

The runtime depends on ``opentelemetry-api`` only. Until the application configures an SDK
(``pip install tidings[otel]``), every span and instrument is the API's no-op, and the hot paths
check that once per command, batch or message instead of building attributes nobody records.
See docs/decisions/0024-opentelemetry-across-the-outbox.md.
"""

from tidings.telemetry.tracing import configure_tracing, tracing_enabled

__all__ = ["configure_tracing", "tracing_enabled"]
