"""The ``tidings`` command line: db, journal, outbox, relay, consume, dlq, projections, sagas, scheduler, trace."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from tidings.cli.render import journal_table, outbox_table, status_table
from tidings.messaging.redaction import redact_url, scrub
from tidings.store import Store, open_store
from tidings.store.errors import PermanentDatabaseError

__all__ = ["app", "main"]

T = TypeVar("T")

app = typer.Typer(help="tidings: operate the journal, outbox and store.", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="The store's schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
console = Console()

DatabaseOption = Annotated[
    str | None,
    typer.Option("--database", "-d", envvar="TIDINGS_DATABASE_URL", help="sqlite:///file.db or postgresql://…"),
]


def _with_store(url: str | None, work: Callable[[Store], Awaitable[T]], *, migrate: bool | None = None) -> T:
    """Run ``work`` on the store at ``url``; a connection or configuration error exits 2 with its message."""

    async def run() -> T:
        store = await open_store(url, migrate=migrate)
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except (ConnectionError, ValueError, PermanentDatabaseError) as exc:
        # Scrubbed again: a client library's message may quote the URL it was given.
        console.print(f"[red]error:[/red] {escape(scrub(str(exc), url, os.environ.get('TIDINGS_BROKER_URL')))}")
        raise typer.Exit(2) from None


@db_app.command("migrate")
def migrate(database: DatabaseOption = None) -> None:
    """Apply the store's migrations that are not applied yet."""

    async def work(store: Store) -> list[str]:
        with console.status(f"migrating {redact_url(store.url)} …"):
            return await store.migrate()

    applied = _with_store(database, work, migrate=False)
    if applied:
        for name in applied:
            console.print(f"[green]applied[/green] {name}")
    else:
        console.print("up to date: nothing to apply")


@app.command("journal")
def journal(
    database: DatabaseOption = None,
    correlation: Annotated[str | None, typer.Option(help="only this correlation id")] = None,
    after: Annotated[int, typer.Option(help="start after this position")] = 0,
    limit: Annotated[int, typer.Option(help="at most this many entries")] = 50,
) -> None:
    """Show journal entries (domain events) in position order."""

    async def work(store: Store) -> None:
        events = await (store.read_correlation(correlation) if correlation else store.read_journal(after, limit))
        console.print(journal_table(events[:limit]))

    _with_store(database, work)


outbox_app = typer.Typer(help="The outbox: what waits to be published, what is stuck, replays.", no_args_is_help=True)
app.add_typer(outbox_app, name="outbox")

BrokerOption = Annotated[
    str | None,
    typer.Option("--broker", "-b", envvar="TIDINGS_BROKER_URL", help="local:, nats://…, amqp://…, redis://…, kafka://…"),
]


@outbox_app.command("list")
def outbox_list(
    database: DatabaseOption = None,
    limit: Annotated[int, typer.Option(help="at most this many rows")] = 50,
) -> None:
    """Show outbox rows (integration events waiting for, or done with, delivery)."""

    async def work(store: Store) -> None:
        console.print(outbox_table(await store.read_outbox(limit)))

    _with_store(database, work)


@outbox_app.command("status")
def outbox_status(database: DatabaseOption = None) -> None:
    """Backlog, age of the oldest undelivered row, parked and retrying rows, per partition owners; dead letters by importance."""
    from tidings.cli.consume import importance_summary
    from tidings.runtime.dead_letters import DeadLetters
    from tidings.store.outbox import Outbox

    async def work(store: Store) -> None:
        console.print(status_table(await Outbox(store).status()))
        # What the outbox delivered but consumers could not apply, by how much the business cares.
        waiting = await DeadLetters(store).counts_by_importance()
        console.print(f"dead letters waiting, by importance: {importance_summary(waiting)}", highlight=False)

    _with_store(database, work)


@outbox_app.command("replay")
def outbox_replay(
    ids: Annotated[list[int] | None, typer.Argument(help="outbox row ids to publish again")] = None,
    parked: Annotated[bool, typer.Option("--parked", help="release every parked row")] = False,
    database: DatabaseOption = None,
) -> None:
    """Publish rows again: delivered or parked ones by id, or every parked row; says per row what happened.

    A delivered row reaches the broker again with its event id unchanged, so consumers that
    applied it skip it and consumers that missed it apply it. Exits with 1 if an id has no row.
    """
    from tidings.store.outbox import Outbox, Replay

    if not ids and not parked:
        console.print("[red]error:[/red] name row ids, or pass --parked to release every parked row")
        raise typer.Exit(2)

    async def work(store: Store) -> list[Replay]:
        return await Outbox(store).replay(ids or (), parked=parked)

    results = _with_store(database, work)
    for result in results:
        console.print(result.describe(), soft_wrap=True, highlight=False)
    if parked and not results:
        console.print("no parked rows: nothing to release")
    if any(result.outcome == "not found" for result in results):
        raise typer.Exit(1)


@app.command("relay")
def relay(
    database: DatabaseOption = None,
    broker: BrokerOption = None,
    batch_size: Annotated[int, typer.Option(help="rows claimed per round")] = 500,
) -> None:
    """Run a relay until interrupted: publish committed outbox rows to the broker, in order per key."""
    import logging

    from rich.logging import RichHandler

    from tidings.cli.workers import broker_when_up, stop_on_signals
    from tidings.runtime import Relay

    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])

    async def work(store: Store) -> None:
        stop = stop_on_signals()
        connected = await broker_when_up(broker, store, stop, console)
        if connected is None:
            return
        try:
            await Relay(store, connected, batch_size=batch_size).run(stop)
        finally:
            await connected.close()

    _with_store(database, work)


def main() -> None:
    """Entry point of the ``tidings`` script."""
    app()


from tidings.cli import scheduler as _scheduler  # noqa: E402,F401  (registers `tidings scheduler` and `tidings sagas`)
from tidings.cli.projections import projections_app as _projections_app  # noqa: E402  (tidings projections …)
app.add_typer(_projections_app, name="projections")
from tidings.cli.consume import consume as _consume, dlq_app as _dlq_app  # noqa: E402  (tidings consume, tidings dlq …)
app.command("consume")(_consume)
app.add_typer(_dlq_app, name="dlq")
from tidings.cli import cdc as _cdc  # noqa: E402,F401  (registers `tidings cdc run | status | drop`)
from tidings.cli.trace import trace as _trace  # noqa: E402  (tidings trace CORRELATION_ID)
app.command("trace")(_trace)
from tidings.cli import contracts as _contracts  # noqa: E402,F401  (registers `tidings contracts export | lock | check | docs`)
from tidings.cli import reconcile as _reconcile  # noqa: E402,F401  (registers `tidings reconcile`)
from tidings.cli.subjects import subjects_app as _subjects_app  # noqa: E402  (tidings subjects forget|new-key)
app.add_typer(_subjects_app, name="subjects")
