"""An OpenTelemetry SDK installed for one test: spans into an in-memory exporter, metrics into an in-memory reader.

The API lets a process set its providers once; a test that installs them must give the process
back as it found it (no SDK), or every later test would run traced. The reset touches the API's
module globals, which is what the OpenTelemetry project's own test helpers do as well.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once


@dataclass
class Sdk:
    """The installed SDK's spans and metrics."""

    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader

    def finished(self) -> tuple[ReadableSpan, ...]:
        """Every span ended so far."""
        return self.spans.get_finished_spans()


@contextmanager
def installed_sdk() -> Iterator[Sdk]:
    """Install a TracerProvider and MeterProvider for the block; uninstall them afterwards."""
    exporter = InMemorySpanExporter()
    reader = InMemoryMetricReader()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    meter_provider = MeterProvider(metric_readers=[reader])
    _reset()
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    try:
        yield Sdk(exporter, reader)
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()
        _reset()


def _reset() -> None:
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
    import opentelemetry.metrics._internal as metrics_internal

    metrics_internal._METER_PROVIDER = None
    metrics_internal._METER_PROVIDER_SET_ONCE = Once()
