"""``tidings consume APP_SPEC`` runs consumers; ``tidings dlq …`` shows, replays and purges their dead letters."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from tidings.cli import _with_store
from tidings.cli.loading import import_attribute
from tidings.cli.workers import broker_when_up, stop_on_signals
from tidings.runtime.dead_letters import DeadLetter, DeadLetters, ReplayRefused
from tidings.messaging.personal import PersonalDataError, is_sealed
from tidings.store import Store
from tidings.store.subject_keys import SubjectKeys

__all__ = ["consume", "dlq_app", "load_consumers"]

console = Console()
dlq_app = typer.Typer(help="Dead letters: messages consumers could not apply, and those parked behind them.", invoke_without_command=True)

DatabaseOption = Annotated[
    str | None,
    typer.Option("--database", "-d", envvar="TIDINGS_DATABASE_URL", help="sqlite:///file.db or postgresql://…"),
]
BrokerOption = Annotated[
    str | None,
    typer.Option("--broker", "-b", envvar="TIDINGS_BROKER_URL", help="local:, nats://…, amqp://…, redis://…, kafka://…"),
]

_STATUS_STYLE = {
    "dead": "bold red",
    "held": "yellow",
    "replay_requested": "cyan",
    "replayed": "green",
    "purged": "dim",
}


# -- tidings consume ----------------------------------------------------------------------------


async def load_consumers(spec: str, store: Store, broker: Any) -> list[Any]:
    """The consumers named by ``module:attribute``: a Consumer, a list of them, or a factory of (store, broker)."""
    from tidings.runtime.consumer import Consumer

    target = import_attribute(spec, what="APP_SPEC", example="myapp.consumers:billing")
    if callable(target) and not isinstance(target, Consumer):
        arity = len(inspect.signature(target).parameters)
        target = target(*(store, broker)[:arity])
        if inspect.isawaitable(target):
            target = await target
    consumers = list(target) if isinstance(target, (list, tuple)) else [target]
    for consumer in consumers:
        if not isinstance(consumer, Consumer):
            raise ValueError(f"{spec} gave {type(consumer).__name__}, not a Consumer (or a list of them, or a factory)")
        consumer.attach(store, broker)
    return consumers


def consume(
    app_spec: Annotated[str, typer.Argument(help="module:attribute of a Consumer, a list of them, or a factory (store, broker)")],
    database: DatabaseOption = None,
    broker: BrokerOption = None,
) -> None:
    """Run consumers until interrupted: apply each message once, in order per key; dead-letter what fails."""
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])

    async def work(store: Store) -> None:
        stop = stop_on_signals()
        connected = await broker_when_up(broker, store, stop, console)
        if connected is None:
            return
        try:
            consumers = await load_consumers(app_spec, store, connected)
            await asyncio.gather(*(consumer.run(stop) for consumer in consumers))
        finally:
            await connected.close()

    _with_store(database, work)


# -- tidings dlq --------------------------------------------------------------------------------


@dlq_app.callback()
def dlq_summary(ctx: typer.Context, database: DatabaseOption = None) -> None:
    """Without a command: how many dead letters wait, per status and per importance of their contract."""
    if ctx.invoked_subcommand is not None:
        return

    async def work(store: Store) -> tuple[dict[tuple[str, str], int], dict[str | None, int]]:
        letters = DeadLetters(store)
        return await letters.counts(), await letters.counts_by_importance()

    counts, by_importance = _with_store(database, work)
    per_status: dict[str, int] = {}
    for (_, status), n in counts.items():
        per_status[status] = per_status.get(status, 0) + n
    console.print("by status: " + (", ".join(f"{n} {s}" for s, n in sorted(per_status.items())) or "none"), highlight=False)
    console.print(f"waiting, by importance: {importance_summary(by_importance)}", highlight=False)
    console.print("`tidings dlq list [--importance critical]` lists them; `tidings dlq --help` shows every command", highlight=False)


def importance_summary(counts: dict[str | None, int]) -> str:
    """``2 critical, 1 normal, 3 not a contract``: dead letters per importance, most important first."""
    from tidings.messaging.contracts import IMPORTANCES

    order = {name: n for n, name in enumerate(IMPORTANCES)}
    ranked = sorted(counts.items(), key=lambda item: order.get(item[0] or "", len(order)))
    return ", ".join(f"{n} {importance or 'not a contract'}" for importance, n in ranked) or "none"


@dlq_app.command("list")
def dlq_list(
    database: DatabaseOption = None,
    consumer: Annotated[str | None, typer.Option("--consumer", "-c", help="only this consumer's")] = None,
    status: Annotated[
        list[str] | None, typer.Option("--status", "-s", help="dead, held, replay_requested, replayed, purged (repeatable)")
    ] = None,
    all_statuses: Annotated[bool, typer.Option("--all", help="every status, replayed and purged too")] = False,
    limit: Annotated[int, typer.Option(help="at most this many rows")] = 50,
    importance: Annotated[
        str | None, typer.Option("--importance", "-i", help="only dead letters of contracts of this importance (critical, high, normal, low)")
    ] = None,
) -> None:
    """Show dead letters, oldest first: what is dead, what is held behind it, what waits for a replay."""
    from tidings.messaging.contracts import IMPORTANCES

    if importance is not None and importance not in IMPORTANCES:
        raise typer.BadParameter(f"{importance!r} is not one of {', '.join(IMPORTANCES)}", param_hint="--importance")
    statuses = ("dead", "held", "replay_requested", "replayed", "purged") if all_statuses else tuple(status or ())
    statuses = statuses or ("dead", "held", "replay_requested")

    async def work(store: Store) -> tuple[list[DeadLetter], dict[tuple[str, str], int]]:
        letters = DeadLetters(store)
        rows = await letters.list(consumer=consumer, statuses=statuses, limit=limit, importance=importance)
        return rows, await letters.counts(consumer)

    rows, counts = _with_store(database, work)
    console.print(dead_letters_table(rows, counts))


@dlq_app.command("show")
def dlq_show(
    row_id: Annotated[int, typer.Argument(metavar="ID", help="the dead letter's id (from `tidings dlq list`)")],
    database: DatabaseOption = None,
) -> None:
    """Everything about one dead letter: the message as received, the error and its traceback."""

    async def work(store: Store) -> tuple[DeadLetter | None, str]:
        row = await DeadLetters(store).get(row_id)
        if row is None or not is_sealed(row.payload):
            return row, ""
        # Personal fields are shown opened, or as masks once their subject is forgotten; without
        # the master key the sealed payload is shown as stored, with the reason.
        keys = SubjectKeys(store)
        try:
            await keys.prepare_payloads([row.payload], f"showing dead letter {row_id}")
            opened = keys.open(row.payload, None, f"dead letter {row_id}")
        except PersonalDataError as exc:
            return row, f"personal fields shown sealed: {exc}"
        return dataclasses.replace(row, payload=opened if isinstance(opened, bytes) else opened.encode()), ""

    row, note = _with_store(database, work)
    if row is None:
        console.print(f"[red]error:[/red] there is no dead letter {row_id} — `tidings dlq list` shows the ids")
        raise typer.Exit(1)
    console.print(dead_letter_panel(row))
    if note:
        console.print(f"[yellow]note:[/yellow] {note}")


@dlq_app.command("replay")
def dlq_replay(
    ids: Annotated[list[int] | None, typer.Argument(metavar="ID…", help="dead letters to apply again")] = None,
    all_dead: Annotated[bool, typer.Option("--all", help="every dead letter (of --consumer, if given)")] = False,
    consumer: Annotated[str | None, typer.Option("--consumer", "-c", help="with --all: only this consumer's")] = None,
    database: DatabaseOption = None,
) -> None:
    """Ask the running consumer to apply dead letters again (once each); held messages of their keys follow in order."""
    if not ids and not all_dead:
        console.print("[red]error:[/red] name dead letter ids, or pass --all to replay every dead letter")
        raise typer.Exit(2)

    async def work(store: Store) -> int:
        return await DeadLetters(store).request_replay(ids or (), all_dead=all_dead, consumer=consumer)

    try:
        count = _with_store(database, work)
    except ReplayRefused as exc:
        console.print(f"[red]refused:[/red] {exc}")
        raise typer.Exit(1) from None
    console.print(
        f"{count} dead letter(s) marked [cyan]replay_requested[/cyan]; the running consumer applies them "
        "(`tidings dlq list --all` shows when they are replayed)"
    )


@dlq_app.command("purge")
def dlq_purge(
    ids: Annotated[list[int], typer.Argument(metavar="ID…", help="dead letters to give up on")],
    database: DatabaseOption = None,
) -> None:
    """Give up on dead letters: they are marked purged (kept, never deleted); messages held behind them flow on."""

    async def work(store: Store) -> int:
        return await DeadLetters(store).purge(ids)

    try:
        count = _with_store(database, work)
    except ReplayRefused as exc:
        console.print(f"[red]refused:[/red] {exc}")
        raise typer.Exit(1) from None
    console.print(f"{count} dead letter(s) purged; the rows stay, with status [dim]purged[/dim]")


# -- rendering ----------------------------------------------------------------------------------


def dead_letters_table(rows: Sequence[DeadLetter], counts: dict[tuple[str, str], int] | None = None) -> Table:
    """One line per dead letter; the title sums up every consumer's counts by status."""
    summary = ""
    if counts:
        per_status: dict[str, int] = {}
        for (_, status), n in counts.items():
            per_status[status] = per_status.get(status, 0) + n
        summary = ": " + ", ".join(f"{n} {status}" for status, n in sorted(per_status.items()))
    table = Table(title=f"dead letters{summary}", title_justify="left")
    for column in ("id", "consumer", "status", "importance", "topic", "key", "event", "attempts", "reason / error", "since"):
        table.add_column(column, overflow="fold")
    for row in rows:
        event = f"{row.event_type or '?'}" + (f" v{row.schema_version}" if row.schema_version else "")
        why = row.reason if row.status == "held" else f"{row.reason}: {_first_line(row.error)}"
        table.add_row(
            str(row.id), row.consumer, Text(row.status, style=_STATUS_STYLE.get(row.status, "")),
            Text(row.importance or "—", style="bold red" if row.importance == "critical" else ""), row.topic, row.key,
            f"{event}\n…{row.event_id[-12:]}", str(row.attempts), why, row.created_at.isoformat(timespec="seconds"),
        )
    if not rows:
        table.caption = "nothing here — every message was applied"
    return table


def dead_letter_panel(row: DeadLetter) -> Panel:
    """One dead letter in full: identity, status, error, traceback, envelope and payload."""
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column(overflow="fold")
    facts.add_row("status", Text(row.status, style=_STATUS_STYLE.get(row.status, "")))
    facts.add_row("consumer", row.consumer)
    facts.add_row("topic / key", f"{row.topic} / {row.key} (partition {row.partition})")
    facts.add_row("event", f"{row.event_type or '?'} v{row.schema_version or '?'}  {row.event_id}")
    facts.add_row("reason", row.reason)
    facts.add_row("attempts", str(row.attempts))
    facts.add_row("created / updated", f"{row.created_at.isoformat(timespec='seconds')} / {row.updated_at.isoformat(timespec='seconds')}")
    if row.envelope:
        facts.add_row("correlation", str(row.envelope.get("correlation_id")))
        facts.add_row("causation", str(row.envelope.get("causation_id")))
    parts: list[Any] = [facts]
    if row.error:
        parts.append(Text(f"\n{row.error}", style="red"))
    if row.traceback:
        parts.append(Syntax(row.traceback.rstrip(), "pytb", word_wrap=True))
    parts.append(Text("\nheaders", style="bold"))
    parts.append(Syntax(json.dumps(row.headers, indent=2, ensure_ascii=False), "json", word_wrap=True))
    parts.append(Text("payload", style="bold"))
    parts.append(_payload(row.payload))
    return Panel(Group(*parts), title=f"dead letter {row.id}", title_align="left")


def _payload(payload: bytes) -> Any:
    try:
        return Syntax(json.dumps(json.loads(payload), indent=2, ensure_ascii=False), "json", word_wrap=True)
    except (ValueError, UnicodeDecodeError):
        # Not JSON (that may be why it is here): show the bytes as they are.
        return Text(repr(payload[:2000]) + (" …" if len(payload) > 2000 else ""))


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""
