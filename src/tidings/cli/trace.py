"""``tidings trace CORRELATION_ID``: one business flow as a tree, from the journal, outbox, inboxes and dead letters.

Every envelope carries a correlation id (the flow) and a causation id (the message that directly
caused it), so the flow can be put back together from what the store already keeps: domain events
from the journal, integration events and saga commands from the outbox (with their delivery
state), the consumers that applied each published message from their inboxes, what they could not
apply from the dead letters, and the saga instances that followed the flow. Nothing here needs a
broker or a running process.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec
import typer
from rich.console import Console
from rich.markup import escape
from rich.tree import Tree

from tidings.store import Store

__all__ = ["Handling", "Trace", "TraceNode", "collect_trace", "trace", "trace_tree"]

_decode = msgspec.json.decode


@dataclass(slots=True)
class Handling:
    """What one consumer did with one published message: applied it, or dead-lettered it (with the reason)."""

    consumer: str
    applied: bool
    reason: str = ""
    status: str = ""
    #: The last line of the error that dead-lettered it (the exception and its message).
    error: str = ""


@dataclass(slots=True)
class TraceNode:
    """One message of the flow: a domain event (journal) or a published message (outbox), and what became of it."""

    event_id: str
    #: "domain" (journal), "integration" (an outbox row on a contract's topic), "command" (a saga's command
    #: message) or "executed" (a command a consumer ran for the message above it, known from its events).
    kind: str
    event_type: str
    source: str | None
    causation_id: str | None
    aggregate: str = ""
    topic: str = ""
    #: For published messages: "delivered", "pending", "parked: …" (the relay's view).
    delivery: str = ""
    handlings: list[Handling] = field(default_factory=list)
    children: list[TraceNode] = field(default_factory=list)


@dataclass(slots=True)
class Trace:
    """Everything the store knows about one correlation id, linked by causation."""

    correlation_id: str
    nodes: dict[str, TraceNode] = field(default_factory=dict)
    #: Causes that are not messages of the store (a command from the API or a CLI): their effects.
    roots: dict[str, list[TraceNode]] = field(default_factory=dict)
    #: Saga instances of the flow: (saga type, key, state or outcome).
    sagas: list[tuple[str, str, str]] = field(default_factory=list)
    #: Dead letters of the flow whose message is not in this store's journal or outbox (foreign input).
    orphans: list[tuple[str, str, Handling]] = field(default_factory=list)
    #: Command id → command type, for the commands of the flow (from their events' envelopes).
    commands: dict[str, str] = field(default_factory=dict)

    @property
    def contexts(self) -> set[str]:
        """The bounded contexts (envelope sources) that produced a message of this flow."""
        return {node.source for node in self.nodes.values() if node.source}

    @property
    def dead_letters(self) -> list[Handling]:
        """Every dead letter of this flow, under a node or not."""
        found = [h for node in self.nodes.values() for h in node.handlings if not h.applied]
        return found + [h for _, _, h in self.orphans]

    def __len__(self) -> int:
        return len(self.nodes)


async def collect_trace(store: Store, correlation_id: str) -> Trace:
    """Read every message, handling, dead letter and saga of ``correlation_id`` from ``store``."""
    trace = Trace(correlation_id)
    postgres = store.dialect == "postgresql"

    # A command has no row of its own: its events name it (causation_id = the command's id,
    # command_type) and what caused it (command_causation_id: the message a consumer handled).
    ran: dict[str, tuple[str, str | None, str | None]] = {}

    def note_command(envelope: dict[str, Any]) -> None:
        command_type, command_id = envelope.get("command_type"), envelope.get("causation_id")
        if command_type and command_id:
            ran.setdefault(command_id, (command_type, envelope.get("command_causation_id"), envelope.get("source")))

    for event in await store.read_correlation(correlation_id):
        envelope = _decode(event.envelope)
        note_command(envelope)
        trace.nodes[event.event_id] = TraceNode(
            event_id=event.event_id,
            kind="domain",
            event_type=event.event_type,
            source=envelope.get("source"),
            causation_id=envelope.get("causation_id"),
            aggregate=_aggregate(envelope),
        )

    if postgres:
        outbox_sql = (
            "SELECT event_id::text, topic, event_type, envelope::text, delivered_at, parked_at, last_error, attempts "
            "FROM tidings_outbox WHERE envelope->>'correlation_id' = ? ORDER BY id"
        )
        outbox_rows = await store.fetch(outbox_sql, (correlation_id,))
    else:
        outbox_sql = (
            "SELECT event_id, topic, event_type, envelope, delivered_at, parked_at, last_error, attempts "
            "FROM tidings_outbox WHERE json_extract(envelope, '$.correlation_id') = ? ORDER BY id"
        )
        outbox_rows = await store.fetch(outbox_sql, (correlation_id,))
    for event_id, topic, event_type, raw, delivered_at, parked_at, last_error, attempts in outbox_rows:
        envelope = _decode(raw)
        note_command(envelope)
        # Commands a saga sends travel on "<context>.commands"; everything else here is a contract.
        kind = "command" if topic.endswith(".commands") else "integration"
        if parked_at:
            delivery = f"parked: {last_error or 'no reason recorded'}"
        elif delivered_at:
            delivery = "delivered"
        else:
            delivery = f"pending ({attempts} attempts)" if attempts else "pending"
        trace.nodes[str(event_id)] = TraceNode(
            event_id=str(event_id),
            kind=kind,
            event_type=event_type,
            source=envelope.get("source"),
            causation_id=envelope.get("causation_id"),
            aggregate=_aggregate(envelope),
            topic=topic,
            delivery=delivery,
        )

    # Dead letters keep the envelope as text (when the headers formed one): match the id in the
    # text, then check the decoded field, so a look-alike substring cannot slip in.
    dead_rows = await store.fetch(
        "SELECT consumer, event_id, event_type, envelope, reason, status, error FROM tidings_dead_letters "
        "WHERE envelope LIKE ? ORDER BY id",
        (f"%{correlation_id}%",),
    )
    dead: dict[tuple[str, str], Handling] = {}
    for consumer, event_id, event_type, raw, reason, status, error in dead_rows:
        try:
            envelope = _decode(raw)
        except msgspec.DecodeError:
            continue
        if envelope.get("correlation_id") != correlation_id:
            continue
        last_line = (error or "").strip().splitlines()[-1:] or [""]
        handling = Handling(consumer, applied=False, reason=reason, status=status, error=last_line[0])
        dead[(consumer, event_id)] = handling
        node = trace.nodes.get(event_id)
        if node is None:
            cause = str(envelope.get("causation_id") or "")
            # A change captured from a legacy table that its translator could not read: name the row change.
            label = f"legacy change {cause[4:]} ({event_type})" if cause.startswith("cdc:") else (event_type or "?")
            trace.orphans.append((event_id, label, handling))
        else:
            node.handlings.append(handling)

    published = [node.event_id for node in trace.nodes.values() if node.kind in ("integration", "command")]
    for chunk in _chunks(published, 500):
        marks = ", ".join("?" for _ in chunk)
        rows = await store.fetch(f"SELECT consumer, event_id FROM tidings_inbox WHERE event_id IN ({marks})", chunk)
        for consumer, event_id in sorted(rows):
            # A dead letter also writes its inbox row (so a redelivery is not applied): not applied.
            if (consumer, event_id) not in dead:
                trace.nodes[event_id].handlings.append(Handling(consumer, applied=True))

    for command_id, (command_type, cause, source) in ran.items():
        trace.commands[command_id] = command_type
        if cause and command_id not in trace.nodes:
            # Run for a message of the flow: a node under that message, parent of its events.
            trace.nodes[command_id] = TraceNode(
                event_id=command_id, kind="executed", event_type=command_type, source=source, causation_id=cause
            )

    for table, what in (("tidings_sagas", "state"), ("tidings_saga_archive", "outcome")):
        rows = await store.fetch(f"SELECT saga_type, saga_key, {what} FROM {table} WHERE correlation_id = ?", (correlation_id,))
        for saga_type, key, value in rows:
            trace.sagas.append((saga_type, key, _saga_state(what, value)))

    for node in trace.nodes.values():
        parent = trace.nodes.get(node.causation_id or "")
        if parent is not None and parent is not node:
            parent.children.append(node)
        else:
            trace.roots.setdefault(node.causation_id or "(no cause)", []).append(node)
    return trace


def trace_tree(trace: Trace) -> Tree:
    """The flow as a Rich tree: each cause, the messages it caused, and who applied or dead-lettered them."""
    contexts = ", ".join(sorted(trace.contexts)) or "no context"
    tree = Tree(f"[bold]correlation {trace.correlation_id}[/bold] — {len(trace)} messages across {contexts}")
    for cause, nodes in trace.roots.items():
        first = nodes[0]
        origin = f"{first.source}" if first.source else "outside"
        name = f" {trace.commands[cause]}" if cause in trace.commands else ""
        if cause.startswith("cdc:"):
            # Captured from a legacy table: the cause is the row change (cdc:table:key@commit LSN).
            branch = tree.add(f"[bold yellow]legacy change[/bold yellow] {cause[4:]} [dim](captured by CDC for {origin})[/dim]")
        else:
            branch = tree.add(f"[bold yellow]command{name}[/bold yellow] …{cause[-8:]} [dim]({origin})[/dim]")
        for node in nodes:
            _grow(branch, node)
    for event_id, event_type, handling in trace.orphans:
        tree.add(f"[red]✗ {event_type}[/red] …{event_id[-8:]} dead-lettered by {handling.consumer}: {_why(handling)}")
    if trace.sagas:
        sagas = tree.add("[bold]sagas[/bold]")
        for saga_type, key, state in trace.sagas:
            sagas.add(f"{saga_type} [dim]{key}[/dim] {state}")
    return tree


def _grow(parent: Tree, node: TraceNode) -> None:
    style = {"domain": "cyan", "integration": "magenta", "command": "yellow", "executed": "yellow"}[node.kind]
    where = f" [dim]{node.aggregate}[/dim]" if node.aggregate else ""
    context = f"[dim]{node.source}:[/dim] " if node.source else ""
    sent = f" → {node.topic} [dim]({node.delivery})[/dim]" if node.topic else ""
    if node.kind == "executed":
        branch = parent.add(f"{context}[{style}]command {node.event_type}[/{style}] …{node.event_id[-8:]}")
    else:
        branch = parent.add(f"{context}[{style}]{node.event_type}[/{style}]{where}{sent}")
    for handling in node.handlings:
        if handling.applied:
            branch.add(f"[green]✓[/green] applied by {handling.consumer}")
        else:
            branch.add(f"[red]✗ dead-lettered by {handling.consumer}[/red] ({handling.status}): {_why(handling)}")
    for child in node.children:
        _grow(branch, child)


def _why(handling: Handling) -> str:
    # Escaped: an error text is data (it may quote a mask like "[forgotten]"), not Rich markup.
    if handling.error and handling.error not in handling.reason:
        return escape(f"{handling.reason} — {handling.error}")
    return escape(handling.reason)


def _aggregate(envelope: dict[str, Any]) -> str:
    if not envelope.get("aggregate_type"):
        return ""
    version = envelope.get("aggregate_version")
    return f"{envelope['aggregate_type']} {envelope.get('aggregate_id')}" + (f" v{version}" if version else "")


def _saga_state(column: str, value: Any) -> str:
    if column == "outcome":
        return f"finished: {value}"
    try:
        state = _decode(value) if isinstance(value, (str, bytes)) else value
    except msgspec.DecodeError:
        return f"running: {value}"
    return f"running: {state}"


def _chunks(values: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def trace(
    correlation_id: Annotated[str, typer.Argument(help="the correlation id of the flow (X-Correlation-ID of a request)")],
    database: Annotated[
        str | None,
        typer.Option("--database", "-d", envvar="TIDINGS_DATABASE_URL", help="sqlite:///file.db or postgresql://…"),
    ] = None,
) -> None:
    """Print the tree of commands, events, publications, handlings and dead letters of one correlation id."""
    console = Console()

    from tidings.cli import _with_store

    async def work(store: Store) -> Trace:
        return await collect_trace(store, correlation_id)

    found = _with_store(database, work)
    if not found.nodes and not found.orphans:
        console.print(f"[yellow]nothing in the store has correlation id {correlation_id}[/yellow]")
        raise typer.Exit(1)
    console.print(trace_tree(found))
