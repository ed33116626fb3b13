"""One licensing story is one connected OpenTelemetry trace: upload → outbox → relay → broker → all three contexts."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind
from rich.console import Console

from examples.licensing.scenario import run_scenario
from support import POSTGRES_URL, require_service
from telemetry_support import installed_sdk
from tidings.telemetry import configure_tracing
from tidings.telemetry import semconv as sc

CONTEXTS = {"asset_processing", "licensing", "compliance"}
ROOT = Path(__file__).resolve().parents[2]


def connected_from(root: ReadableSpan, spans: tuple[ReadableSpan, ...]) -> list[ReadableSpan]:
    """Every span reachable from ``root`` over parent-child edges and links, either way."""
    by_id = {span.context.span_id: span for span in spans}
    edges: dict[int, set[int]] = defaultdict(set)
    for span in spans:
        me = span.context.span_id
        others = [span.parent.span_id] if span.parent is not None else []
        others += [link.context.span_id for link in span.links]
        for other in others:
            edges[me].add(other)
            edges[other].add(me)
    seen, todo = {root.context.span_id}, [root.context.span_id]
    while todo:
        for other in edges[todo.pop()] - seen:
            seen.add(other)
            todo.append(other)
    return [by_id[span_id] for span_id in seen if span_id in by_id]


def upload_command(spans: tuple[ReadableSpan, ...], correlation_id: str) -> ReadableSpan:
    """The span of the command whose outbox rows started the story (the upload of asset 1)."""
    creates = [
        span for span in spans
        if span.kind is SpanKind.PRODUCER and span.attributes.get(sc.MESSAGING_OPERATION_TYPE) == "create"
        and span.attributes.get(sc.MESSAGING_MESSAGE_CONVERSATION_ID) == correlation_id
    ]
    first = min(creates, key=lambda span: span.start_time)
    by_id = {span.context.span_id: span for span in spans}
    assert first.parent is not None, "a create span is a child of its command's span"
    command = by_id[first.parent.span_id]
    assert command.attributes.get(sc.TIDINGS_COMMAND_TYPE) == "asset_processing.UploadAsset"
    return command


def reached(component: list[ReadableSpan]) -> tuple[set[str], set[str], set[SpanKind]]:
    """Contexts whose commands ran in the component, the consumers that processed in it, and its span kinds."""
    contexts = {str(s.attributes[sc.TIDINGS_CONTEXT]) for s in component if sc.TIDINGS_CONTEXT in s.attributes}
    consumers = {
        str(s.attributes[sc.MESSAGING_CONSUMER_GROUP_NAME]) for s in component if sc.MESSAGING_CONSUMER_GROUP_NAME in s.attributes
    }
    return contexts, consumers, {s.kind for s in component}


async def run_story(database: str | None = None, broker: str | None = None) -> tuple[str, tuple[ReadableSpan, ...]]:
    quiet = Console(file=io.StringIO(), width=140)
    with installed_sdk() as sdk:
        result = await run_scenario(database, broker, out=quiet, progress=quiet)
        spans = sdk.finished()
    assert result.ok, [f"{o.name}: {o.detail}" for o in result.failed]
    return result.correlation_id, spans


async def test_the_story_is_one_connected_trace_from_the_upload_through_all_three_contexts() -> None:
    correlation_id, spans = await run_story()
    command = upload_command(spans, correlation_id)
    component = connected_from(command, spans)
    contexts, consumers, kinds = reached(component)
    assert {c.split(".")[0] for c in consumers} == CONTEXTS, f"consumers reached: {sorted(consumers)}"
    projections = {s.attributes[sc.TIDINGS_PROJECTION] for s in component if sc.TIDINGS_PROJECTION in s.attributes}
    assert projections, "no projector batch is linked to the story's commands"
    assert CONTEXTS <= contexts, f"the upload's trace reached only {sorted(contexts)}"
    assert {SpanKind.PRODUCER, SpanKind.CONSUMER, SpanKind.INTERNAL} <= kinds
    sends = [s for s in component if s.attributes.get(sc.MESSAGING_OPERATION_TYPE) == "send"]
    assert sends and all(s.attributes[sc.MESSAGING_SYSTEM] == "tidings.local" for s in sends)
    # By default a consumer's process span links to the create span and starts a trace of its own.
    assert len({s.context.trace_id for s in component}) > 1


async def test_on_postgresql_and_nats_the_traceparent_crosses_jetstream_and_the_story_stays_connected() -> None:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    require_service("NATS", "127.0.0.1", 4222)
    correlation_id, spans = await run_story(POSTGRES_URL, "nats://127.0.0.1:4222")
    contexts, consumers, _ = reached(connected_from(upload_command(spans, correlation_id), spans))
    assert CONTEXTS <= contexts, f"the upload's trace reached only {sorted(contexts)}"
    assert any(c.startswith("compliance.") for c in consumers)
    sends = [s for s in spans if s.attributes.get(sc.MESSAGING_OPERATION_TYPE) == "send"]
    assert sends and {s.attributes[sc.MESSAGING_SYSTEM] for s in sends} == {"nats"}


async def test_with_process_parent_the_story_is_one_trace_id() -> None:
    configure_tracing(process_parent=True)
    try:
        correlation_id, spans = await run_story()
    finally:
        configure_tracing(process_parent=False)
    command = upload_command(spans, correlation_id)
    component = connected_from(command, spans)
    contexts, _, _ = reached(component)
    assert CONTEXTS <= contexts
    # The relay's send spans and projector batches stay roots: each carries messages of many traces.
    flow = [s for s in component if sc.MESSAGING_BATCH_MESSAGE_COUNT not in s.attributes]
    others = {(s.name, s.kind) for s in flow if s.context.trace_id != command.context.trace_id}
    assert not others, f"spans outside the story's trace: {sorted(others)}"


def test_the_demo_writes_the_story_as_otlp_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "story.jsonl"
    run = subprocess.run(
        [sys.executable, "-m", "examples.licensing", "demo", "--otel-file", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    correlation_id = re.search(r"the story's correlation id: (\S+)", run.stdout).group(1)  # type: ignore[union-attr]

    spans, services = [], set()
    for line in path.read_text().splitlines():
        for resource_spans in json.loads(line)["resourceSpans"]:
            attributes = {a["key"]: a["value"] for a in resource_spans["resource"]["attributes"]}
            services.add(attributes["service.name"]["stringValue"])
            spans += [span for scope in resource_spans["scopeSpans"] for span in scope["spans"]]
    assert services == {"examples.licensing"}
    # OTLP/JSON: ids in hex, enums as numbers
    for span in spans:
        assert re.fullmatch(r"[0-9a-f]{32}", span["traceId"]) and re.fullmatch(r"[0-9a-f]{16}", span["spanId"])
        for link in span.get("links", ()):
            assert re.fullmatch(r"[0-9a-f]{16}", link["spanId"])
    def attrs(span: dict) -> dict[str, str]:
        return {a["key"]: next(iter(a["value"].values())) for a in span.get("attributes", ())}

    story = [s for s in spans if attrs(s).get(sc.MESSAGING_MESSAGE_CONVERSATION_ID) == correlation_id]
    kinds = {s["kind"] for s in story}
    assert {4, 5} <= kinds, f"the story's spans hold no producer (4) and consumer (5) span: {kinds}"
    assert any(s["name"] == "licensing story" for s in spans)
    sends = [s for s in spans if attrs(s).get(sc.MESSAGING_OPERATION_TYPE) == "send"]
    assert sends and all(s.get("links") for s in sends)
