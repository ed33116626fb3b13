"""Spans written to a file as OTLP JSON lines, so a run's trace can be loaded into any tracing backend.

Each line is one ``ExportTraceServiceRequest`` in the OTLP/JSON encoding (what the OpenTelemetry
Collector's file exporter writes and its OTLP JSON file receiver reads): the protobuf message
built by the OpenTelemetry exporter's own encoder, with trace and span ids as hex strings and
enums as numbers, as the OTLP/JSON specification asks. Needs ``pip install tidings[otel]``.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    from google.protobuf.json_format import MessageToDict
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"writing spans to a file needs the OpenTelemetry SDK ({exc.name} is missing): pip install 'tidings[otel]'"
    ) from None

__all__ = ["OtlpJsonLinesExporter", "trace_to_file"]

_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


class OtlpJsonLinesExporter(SpanExporter):
    """A span exporter that appends one OTLP/JSON line per export call to ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write ``spans`` as one line; FAILURE (and the file left as it was) if the file cannot be written."""
        request = MessageToDict(encode_spans(spans), use_integers_for_enums=True)
        for resource_spans in request.get("resourceSpans", ()):
            for scope_spans in resource_spans.get("scopeSpans", ()):
                for span in scope_spans.get("spans", ()):
                    _hex_ids(span)
                    for link in span.get("links", ()):
                        _hex_ids(link)
        line = json.dumps(request, separators=(",", ":")) + "\n"
        with self._lock:
            try:
                self._file.write(line)
                self._file.flush()
            except OSError:
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Close the file."""
        with self._lock:
            self._file.close()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Every line is flushed as it is written."""
        return True


def _hex_ids(item: dict[str, Any]) -> None:
    # protobuf's JSON mapping writes bytes as base64; OTLP/JSON wants ids as lowercase hex.
    for name in _ID_FIELDS:
        if item.get(name):
            item[name] = base64.b64decode(item[name]).hex()


def trace_to_file(path: str | Path, service_name: str = "tidings") -> TracerProvider:
    """A TracerProvider that batches every span into ``path`` as OTLP JSON lines; shut it down to flush."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OtlpJsonLinesExporter(path)))
    return provider
