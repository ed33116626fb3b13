"""``tidings projections status | rebuild NAME | run``: read models kept from the journal."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from tidings.cli import DatabaseOption, _with_store, console
from tidings.messaging.redaction import redact_url
from tidings.cli.loading import import_attribute
from tidings.cli.workers import stop_on_signals
from tidings.runtime.projection import Projection
from tidings.runtime.projector import ProjectionFailed, ProjectionStatus, Projector, RebuildProgress
from tidings.store import Store

__all__ = ["load_projector", "projections_app", "status_table"]

projections_app = typer.Typer(
    help="Projections (read models): where they stand, rebuilding one from history, keeping them up to date.",
    no_args_is_help=True,
)

AppOption = Annotated[
    str,
    typer.Option(
        "--app",
        "-a",
        envvar="TIDINGS_APP",
        help="module:attribute naming the projections: a Projection, a list of them, or a function store -> Projector",
    ),
]


def load_projector(spec: str) -> Callable[[Store], Awaitable[Projector]]:
    """A function building the Projector that ``module:attribute`` names, on a store."""
    try:
        target: Any = import_attribute(spec, what="--app", example="myapp.read_models:PROJECTIONS")
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None

    async def build(store: Store) -> Projector:
        if isinstance(target, Projection) or (isinstance(target, type) and issubclass(target, Projection)):
            return Projector(store, [target])
        if isinstance(target, (list, tuple, set, frozenset)):
            return Projector(store, list(target))
        if callable(target):
            built = target(store)
            if inspect.isawaitable(built):
                built = await built
            if isinstance(built, Projector):
                return built
            if isinstance(built, Sequence):
                return Projector(store, list(built))
            raise typer.BadParameter(f"{spec} returned {type(built).__name__}, not a Projector or a list of projections")
        raise typer.BadParameter(
            f"{spec} is a {type(target).__name__}; name a Projection, a list of them, or a function store -> Projector"
        )

    return build


def status_table(statuses: Sequence[ProjectionStatus]) -> Table:
    """One row per projection: position against the journal's head, lag in events and seconds, state."""
    table = Table(title="projections", title_justify="left")
    for column, justify in (
        ("name", "left"), ("position", "right"), ("lag events", "right"), ("lag seconds", "right"), ("state", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for s in statuses:
        state = s.state if s.state == "live" else f"[yellow]{s.state}[/yellow]"
        if s.last_error:
            state = f"[red]{s.state}[/red]: {s.last_error}"
        table.add_row(s.name, str(s.position), str(s.lag_events), f"{s.lag_seconds:.1f}", state)
    return table


@projections_app.command("status")
def status(app_spec: AppOption, database: DatabaseOption = None) -> None:
    """Each projection's position, how far behind the journal it is (events, seconds), and its state."""
    build = load_projector(app_spec)

    async def work(store: Store) -> list[ProjectionStatus]:
        return await (await build(store)).status()

    console.print(status_table(_with_store(database, work)))


@projections_app.command("rebuild")
def rebuild(
    name: Annotated[str, typer.Argument(help="the projection to rebuild")],
    app_spec: AppOption,
    database: DatabaseOption = None,
) -> None:
    """Replay the whole journal into fresh tables, swap them in at once, then catch up.

    Readers keep the old model until the swap and get the new one after it; a running projector
    may stay up meanwhile.
    """
    build = load_projector(app_spec)

    async def work(store: Store) -> Any:
        projector = await build(store)
        if name not in projector.projections:
            known = ", ".join(sorted(projector.projections)) or "(none)"
            console.print(f"[red]error:[/red] no projection named {name!r}; known: {known}")
            raise typer.Exit(2)
        columns = (
            TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task(f"rebuilding {name}", total=None, rate="")
            started = asyncio.get_running_loop().time()

            def advance(p: RebuildProgress) -> None:
                elapsed = max(asyncio.get_running_loop().time() - started, 1e-9)
                bar.update(task, completed=p.position, total=max(p.head, 1), rate=f"{p.events / elapsed:,.0f} events/s")

            try:
                return await projector.rebuild(name, progress=advance)
            except ProjectionFailed as exc:
                console.print(f"[red]rebuild failed:[/red] {exc}")
                raise typer.Exit(1) from None

    result = _with_store(database, work)
    console.print(
        f"[green]rebuilt {result.name}[/green]: {result.events:,} events in {result.seconds:.1f} s "
        f"({result.events / max(result.seconds, 1e-9):,.0f} events/s), now at position {result.position}"
    )


@projections_app.command("run")
def run(app_spec: AppOption, database: DatabaseOption = None) -> None:
    """Keep every projection up to date until interrupted (SIGINT/SIGTERM)."""
    import logging

    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])
    build = load_projector(app_spec)

    async def work(store: Store) -> None:
        stop = stop_on_signals()
        projector = await build(store)
        console.print(f"projecting {', '.join(sorted(projector.projections))} from {redact_url(store.url)}")
        await projector.run(stop)

    _with_store(database, work)
