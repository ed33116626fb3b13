"""Spans of one message's life: create (the command's commit), send (the relay), process (a consumer).

The outbox splits a message's life in two: a command commits the row, and later — another
process, another moment — a relay sends it. The context active when the relay runs says nothing
about who wrote the row, so the *create* span's W3C ``traceparent`` is written into the row's
envelope at write time, travels in the broker headers under the standard ``traceparent`` name,
and the relay's *send* span and the consumer's *process* span link to it. A process span is
the current span while handlers run, so a command a handler runs (``ctx.handle``) is a child of
it and the trace goes on into the next context. With ``configure_tracing(process_parent=True)``
the process span is also a child of the create span, which puts a whole flow in one trace id.

Every entry point here is called only after :func:`tracing_enabled` said yes, once per command,
relay batch or consumer batch; without a configured SDK nothing here runs per message.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, NoOpTracerProvider, ProxyTracerProvider, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tidings.telemetry import semconv as sc

if TYPE_CHECKING:
    from tidings.brokers.base import OutgoingMessage
    from tidings.messaging.envelope import Envelope

__all__ = [
    "configure_tracing",
    "tracing_enabled",
    "command_span",
    "start_create_span",
    "end_spans",
    "send_span",
    "mark_failures",
    "process_span",
    "projection_batch_span",
    "current_traceparent",
    "traceparent_of",
]

_tracer: trace.Tracer = trace.NoOpTracer()
_provider: object = None
_propagator = TraceContextTextMapPropagator()
_EMPTY = otel_context.Context()
_process_parent = False


def configure_tracing(*, process_parent: bool = False) -> None:
    """Choose how a consumer's process span relates to the span that created the message.

    By default it links to it and starts a trace of its own (the messaging conventions' default:
    the consumer may run much later, or once for many producers). ``process_parent=True`` makes
    it a child as well, so one business flow is one trace id in the tracing backend.
    """
    global _process_parent
    _process_parent = process_parent


def tracing_enabled() -> bool:
    """Whether an SDK tracer provider is configured (False: every span would be the API's no-op)."""
    global _tracer, _provider
    provider = trace.get_tracer_provider()
    if provider is not _provider:
        # A tracer of the provider in force now (a test or a process may install another one).
        _provider = provider
        _tracer = provider.get_tracer("tidings")
    return not isinstance(provider, (ProxyTracerProvider, NoOpTracerProvider))


def traceparent_of(span: Span) -> str | None:
    """The W3C ``traceparent`` value naming ``span`` (None for an invalid span)."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def current_traceparent() -> str | None:
    """The ``traceparent`` of the span current now (None outside any span)."""
    return traceparent_of(trace.get_current_span())


#: Links kept per projector batch: enough to find the commands behind it, bounded for big rebuilds.
MAX_BATCH_LINKS = 128


@contextmanager
def projection_batch_span(projection: str, events: int, traceparents: Sequence[str]) -> Iterator[Span]:
    """The CONSUMER span of one projector batch, linked to the commands that recorded its events (first 128)."""
    links = []
    for traceparent in dict.fromkeys(traceparents):  # one link per command, in order
        if len(links) == MAX_BATCH_LINKS:
            break
        if (link := _link(traceparent)) is not None:
            links.append(link)
    attributes = {
        sc.MESSAGING_OPERATION_TYPE: "process",
        sc.MESSAGING_OPERATION_NAME: "project",
        sc.MESSAGING_BATCH_MESSAGE_COUNT: events,
        sc.TIDINGS_PROJECTION: projection,
    }
    with _tracer.start_as_current_span(f"project {projection}", context=_EMPTY, kind=SpanKind.CONSUMER,
                                       links=links, attributes=attributes) as span:
        yield span


def _link(traceparent: str | None, **attributes: str) -> Link | None:
    if not traceparent:
        return None
    ctx = trace.get_current_span(_propagator.extract({sc.TRACEPARENT_HEADER: traceparent})).get_span_context()
    return Link(ctx, attributes) if ctx.is_valid else None


@contextmanager
def command_span(context: str, command_type: str) -> Iterator[Span]:
    """The span around one command: its handler, its domain bus and its commit (INTERNAL)."""
    with _tracer.start_as_current_span(
        f"{command_type} handle",
        kind=SpanKind.INTERNAL,
        attributes={sc.TIDINGS_COMMAND_TYPE: command_type, sc.TIDINGS_CONTEXT: context},
    ) as span:
        yield span


def start_create_span(topic: str, event_id: str, event_type: str, correlation_id: str,
                      aggregate_type: str | None, aggregate_id: str | None, context: str) -> Span:
    """Start the PRODUCER span of one outbox row (a child of the current span); end it with :func:`end_spans`."""
    attributes = {
        sc.MESSAGING_OPERATION_TYPE: "create",
        sc.MESSAGING_OPERATION_NAME: "create",
        sc.MESSAGING_DESTINATION_NAME: topic,
        sc.MESSAGING_MESSAGE_ID: event_id,
        sc.MESSAGING_MESSAGE_CONVERSATION_ID: correlation_id,
        sc.TIDINGS_MESSAGE_TYPE: event_type,
        sc.TIDINGS_CONTEXT: context,
    }
    if aggregate_type:
        attributes[sc.TIDINGS_AGGREGATE_TYPE] = aggregate_type
    if aggregate_id:
        attributes[sc.TIDINGS_AGGREGATE_ID] = aggregate_id
    return _tracer.start_span(f"create {topic}", kind=SpanKind.PRODUCER, attributes=attributes)


def end_spans(spans: Sequence[Span], error: BaseException | None = None) -> None:
    """End ``spans``, marked as failed with ``error`` if the commit they belong to failed."""
    for span in spans:
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end()


@contextmanager
def send_span(system: str, messages: Sequence[OutgoingMessage]) -> Iterator[Span]:
    """The relay's PRODUCER span for one publish call, linked to each message's create span.

    A root span: the relay's own context (its loop) is not the cause of these messages.
    """
    links = [
        link for m in messages
        if (link := _link(m.headers.get(sc.TRACEPARENT_HEADER), **{sc.MESSAGING_MESSAGE_ID: m.event_id})) is not None
    ]
    topics = {m.topic for m in messages}
    attributes: dict[str, str | int] = {
        sc.MESSAGING_SYSTEM: system,
        sc.MESSAGING_OPERATION_TYPE: "send",
        sc.MESSAGING_OPERATION_NAME: "publish",
        sc.MESSAGING_BATCH_MESSAGE_COUNT: len(messages),
    }
    name = "send"
    if len(topics) == 1:
        topic = next(iter(topics))
        attributes[sc.MESSAGING_DESTINATION_NAME] = topic
        name = f"send {topic}"
    if len(messages) == 1:
        attributes[sc.MESSAGING_MESSAGE_ID] = messages[0].event_id
    with _tracer.start_as_current_span(name, context=_EMPTY, kind=SpanKind.PRODUCER, links=links,
                                       attributes=attributes) as span:
        yield span


def mark_failures(span: Span, results: Sequence[BaseException | None]) -> None:
    """Mark a send span failed when the broker refused some of its messages (counted, first error named)."""
    errors = [r for r in results if r is not None]
    if errors:
        span.set_status(Status(StatusCode.ERROR, f"{len(errors)} of {len(results)} not published: {type(errors[0]).__name__}"))
        span.record_exception(errors[0])


@contextmanager
def process_span(system: str, consumer: str, topic: str, envelope: Envelope) -> Iterator[Span]:
    """The CONSUMER span around one message's handlers, current while they run (so ``ctx.handle`` continues it)."""
    link = _link(envelope.traceparent)
    parent = _EMPTY
    if _process_parent and envelope.traceparent:
        parent = _propagator.extract({sc.TRACEPARENT_HEADER: envelope.traceparent}, context=_EMPTY)
    attributes = {
        sc.MESSAGING_SYSTEM: system,
        sc.MESSAGING_OPERATION_TYPE: "process",
        sc.MESSAGING_OPERATION_NAME: "process",
        sc.MESSAGING_DESTINATION_NAME: topic,
        sc.MESSAGING_CONSUMER_GROUP_NAME: consumer,
        sc.MESSAGING_MESSAGE_ID: envelope.event_id,
        sc.MESSAGING_MESSAGE_CONVERSATION_ID: envelope.correlation_id,
        sc.TIDINGS_MESSAGE_TYPE: envelope.event_type,
    }
    if envelope.aggregate_type:
        attributes[sc.TIDINGS_AGGREGATE_TYPE] = envelope.aggregate_type
    if envelope.aggregate_id:
        attributes[sc.TIDINGS_AGGREGATE_ID] = envelope.aggregate_id
    with _tracer.start_as_current_span(f"process {topic}", context=parent, kind=SpanKind.CONSUMER,
                                       links=[link] if link else None, attributes=attributes) as span:
        yield span
