"""One licensing story is one connected OpenTelemetry trace: upload → outbox → relay → broker → all three contexts."""

from __future__ import annotations

import io
from collections import defaultdict

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind
from rich.console import Console

from examples.licensing.scenario import run_scenario
from telemetry_support import installed_sdk
from tidings.telemetry import configure_tracing
from tidings.telemetry import semconv as sc

CONTEXTS = {"asset_processing", "licensing", "compliance"}


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
        str(s.attributes[sc.MESSAGING_CONSUMER_GROUP_NAME]) for s in component if s.kind is SpanKind.CONSUMER
    }
    return contexts, consumers, {s.kind for s in component}


async def run_story() -> tuple[str, tuple[ReadableSpan, ...]]:
    quiet = Console(file=io.StringIO(), width=140)
    with installed_sdk() as sdk:
        result = await run_scenario(None, None, out=quiet, progress=quiet)
        spans = sdk.finished()
    assert result.ok, [f"{o.name}: {o.detail}" for o in result.failed]
    return result.correlation_id, spans


async def test_the_story_is_one_connected_trace_from_the_upload_through_all_three_contexts() -> None:
    correlation_id, spans = await run_story()
    command = upload_command(spans, correlation_id)
    component = connected_from(command, spans)
    contexts, consumers, kinds = reached(component)
    print(sorted(contexts), sorted(consumers))
    assert CONTEXTS <= contexts, f"the upload's trace reached only {sorted(contexts)}"
    assert {SpanKind.PRODUCER, SpanKind.CONSUMER, SpanKind.INTERNAL} <= kinds
    sends = [s for s in component if s.attributes.get(sc.MESSAGING_OPERATION_TYPE) == "send"]
    assert sends and all(s.attributes[sc.MESSAGING_SYSTEM] == "tidings.local" for s in sends)
    # By default a consumer's process span links to the create span and starts a trace of its own.
    assert len({s.context.trace_id for s in component}) > 1


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
    # The relay's send spans stay roots: one publish call carries messages of many traces.
    flow = [s for s in component if s.attributes.get(sc.MESSAGING_OPERATION_TYPE) != "send"]
    others = {(s.name, s.kind) for s in flow if s.context.trace_id != command.context.trace_id}
    assert not others, f"spans outside the story's trace: {sorted(others)}"
