"""The ``tidings`` command line: database migrations and a readable look at the journal and outbox."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from tidings.cli.render import journal_table, outbox_table
from tidings.store import Store, open_store

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
    async def run() -> T:
        store = await open_store(url, migrate=migrate)
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except (ConnectionError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@db_app.command("migrate")
def migrate(database: DatabaseOption = None) -> None:
    """Apply the store's migrations that are not applied yet."""

    async def work(store: Store) -> list[str]:
        with console.status(f"migrating {store.url} …"):
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


@app.command("outbox")
def outbox(
    database: DatabaseOption = None,
    limit: Annotated[int, typer.Option(help="at most this many rows")] = 50,
) -> None:
    """Show outbox rows (integration events waiting for, or done with, delivery)."""

    async def work(store: Store) -> None:
        console.print(outbox_table(await store.read_outbox(limit)))

    _with_store(database, work)


def main() -> None:
    """Entry point of the ``tidings`` script."""
    app()
