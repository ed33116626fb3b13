"""``tidings scheduler`` fires saga deadlines as they fall due; ``tidings sagas list`` shows instances and deadlines."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any

import msgspec
import typer
from rich.table import Table

from tidings.cli import DatabaseOption, _with_store, app, console
from tidings.cli.loading import import_attribute
from tidings.cli.workers import stop_on_signals
from tidings.messaging.envelope import utc_now
from tidings.runtime.sagas import ArchivedSaga, Saga, SagaRecord, SagaRunner, list_archived, list_sagas
from tidings.runtime.scheduler import DeadlineRow, Scheduler, list_deadlines
from tidings.store import Store

__all__ = ["load_runner", "sagas_app"]

sagas_app = typer.Typer(help="Saga instances: running ones with their deadlines, finished ones.", no_args_is_help=True)
app.add_typer(sagas_app, name="sagas")

AppOption = Annotated[
    str,
    typer.Option(
        "--app",
        "-a",
        envvar="TIDINGS_APP",
        help="module:attribute naming the sagas: a Saga class, a list of them, or a function store -> SagaRunner",
    ),
]


def load_runner(spec: str, store: Store) -> Callable[[], Any]:
    """A zero-argument callable building the SagaRunner that ``module:attribute`` names, on ``store``."""
    try:
        target: Any = import_attribute(spec, what="--app", example="myapp.sagas:SAGAS")
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None

    async def build() -> SagaRunner:
        if isinstance(target, type) and issubclass(target, Saga):
            return SagaRunner(store, [target])
        if isinstance(target, (list, tuple, set, frozenset)):
            return SagaRunner(store, list(target))
        if callable(target):
            runner = target(store)
            if inspect.isawaitable(runner):
                runner = await runner
            if isinstance(runner, SagaRunner):
                return runner
            raise typer.BadParameter(f"{spec} returned {type(runner).__name__}, not a SagaRunner")
        raise typer.BadParameter(
            f"{spec} is a {type(target).__name__}; name a Saga class, a list of them, or a function store -> SagaRunner"
        )

    return build


@app.command("scheduler")
def scheduler(
    app_spec: AppOption,
    database: DatabaseOption = None,
    poll_interval: Annotated[float, typer.Option(help="seconds between looks at the deadline table, at most")] = 1.0,
    batch_size: Annotated[int, typer.Option(help="deadlines fired per round")] = 100,
) -> None:
    """Fire saga deadlines as they fall due, until interrupted (Ctrl-C or SIGTERM); run one or several."""
    import logging

    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])

    async def work(store: Store) -> None:
        runner = await load_runner(app_spec, store)()
        stop = stop_on_signals()
        await Scheduler(runner, poll_interval=poll_interval, batch_size=batch_size).run(stop)

    _with_store(database, work)


@sagas_app.command("list")
def sagas_list(
    database: DatabaseOption = None,
    saga_type: Annotated[str | None, typer.Option("--type", "-t", help="only sagas of this type")] = None,
    archived: Annotated[bool, typer.Option("--archived", help="show finished (archived) sagas instead")] = False,
    limit: Annotated[int, typer.Option(help="at most this many rows per table")] = 50,
) -> None:
    """Running saga instances with their state and open deadlines (or, with --archived, finished ones)."""

    async def work(store: Store) -> tuple[list[Any], list[DeadlineRow]]:
        if archived:
            return await list_archived(store, saga_type=saga_type, limit=limit), []
        running = await list_sagas(store, saga_type=saga_type, limit=limit)
        return running, await list_deadlines(store, saga_type=saga_type, limit=limit)

    rows, deadlines = _with_store(database, work)
    now = utc_now()
    if archived:
        console.print(archive_table(rows))
        return
    console.print(sagas_table(rows, deadlines, now))
    console.print(deadlines_table(deadlines, now))


def sagas_table(sagas: Sequence[SagaRecord], deadlines: Sequence[DeadlineRow], now: datetime) -> Table:
    """One row per running instance: type, key, version, state, age, and its next deadline."""
    table = Table(title=f"running sagas: {len(sagas)}", title_justify="left")
    for column in ("saga", "key", "v", "state", "started", "updated", "next deadline"):
        table.add_column(column, overflow="fold")
    next_by_instance: dict[str, DeadlineRow] = {}
    for row in deadlines:
        if row.status in ("pending", "retrying"):
            next_by_instance.setdefault(row.saga_id, row)
    for saga in sagas:
        upcoming = next_by_instance.get(saga.saga_id)
        table.add_row(
            saga.saga_type,
            saga.key,
            str(saga.version),
            msgspec.json.encode(saga.state).decode(),
            _ago(saga.started_at, now),
            _ago(saga.updated_at, now),
            f"{_short_name(upcoming.message_type)} {_due(upcoming.due_at, now)}" if upcoming else "",
        )
    return table


def deadlines_table(deadlines: Sequence[DeadlineRow], now: datetime) -> Table:
    """One row per open deadline: which instance gets which message when, and how firing went so far."""
    table = Table(title=f"open deadlines: {len(deadlines)}", title_justify="left")
    for column in ("deadline", "saga", "key", "message", "due", "status", "attempts", "last error"):
        table.add_column(column, overflow="fold")
    for row in deadlines:
        table.add_row(
            "…" + row.deadline_id[-8:],
            row.saga_type,
            row.saga_key,
            row.message_type,
            _due(row.due_at, now),
            row.status if row.status != "parked" else "[red]parked[/red]",
            str(row.attempts),
            row.last_error or "",
        )
    return table


def archive_table(sagas: Sequence[ArchivedSaga]) -> Table:
    """One row per finished instance: outcome, reason, final state and what it handled."""
    table = Table(title=f"finished sagas: {len(sagas)}", title_justify="left")
    for column in ("saga", "key", "outcome", "v", "finished", "state", "handled"):
        table.add_column(column, overflow="fold")
    for saga in sagas:
        outcome = saga.outcome if saga.outcome == "completed" else f"[yellow]{saga.outcome}[/yellow]: {saga.reason}"
        handled = " → ".join(_short_name(entry.get("message", "?")) for entry in saga.history)
        table.add_row(
            saga.saga_type,
            saga.key,
            outcome,
            str(saga.version),
            saga.completed_at.isoformat(timespec="seconds"),
            msgspec.json.encode(saga.state).decode(),
            handled,
        )
    return table


def _short_name(message_type: str) -> str:
    return message_type.rpartition(".")[2]


def _ago(at: datetime, now: datetime) -> str:
    return f"{_span((now - at).total_seconds())} ago"


def _due(at: datetime, now: datetime) -> str:
    seconds = (at - now).total_seconds()
    return f"in {_span(seconds)}" if seconds >= 0 else f"[yellow]{_span(-seconds)} overdue[/yellow]"


def _span(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"
