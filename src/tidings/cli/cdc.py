"""``tidings cdc run | status | drop``: capture a legacy table's row changes into the outbox, see how far behind, remove it."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from tidings.cdc import CdcConfigurationError, CdcRunner, ChangeCapture, SlotReader
from tidings.cli import DatabaseOption, _with_store, app, console
from tidings.cli.loading import import_attribute
from tidings.cli.workers import stop_on_signals
from tidings.store import Store

__all__ = ["cdc_app"]

cdc_app = typer.Typer(help="Change data capture from PostgreSQL: legacy row changes → integration events.", no_args_is_help=True)
app.add_typer(cdc_app, name="cdc")

SourceOption = Annotated[
    str, typer.Option("--source", "-s", envvar="TIDINGS_CDC_SOURCE", help="the legacy PostgreSQL database (wal_level=logical)")
]
SlotOption = Annotated[str, typer.Option("--slot", help="the logical replication slot (one per capture process)")]


def _capture(spec: str) -> ChangeCapture:
    try:
        target: Any = import_attribute(spec, what="--app", example="legacy.acl:capture")
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    capture = target() if callable(target) and not isinstance(target, ChangeCapture) else target
    if not isinstance(capture, ChangeCapture):
        raise typer.BadParameter(f"{spec} is a {type(capture).__name__}; name a ChangeCapture or a function returning one")
    return capture


@cdc_app.command("run")
def run(
    source: SourceOption,
    slot: SlotOption,
    app_spec: Annotated[str, typer.Option("--app", "-a", help="module:attribute of the ChangeCapture (its translators)")],
    database: DatabaseOption = None,
    poll_interval: Annotated[float, typer.Option(help="seconds between reads when the slot is empty")] = 0.5,
    max_changes: Annotated[int, typer.Option(help="changes per read (whole transactions are always read)")] = 5_000,
) -> None:
    """Capture the translators' tables: each source transaction's events and checkpoint commit together, then the slot moves."""
    capture = _capture(app_spec)

    async def work(store: Store) -> None:
        stop = stop_on_signals()
        reader = SlotReader(source, slot, capture.tables)
        try:
            await reader.setup()
        except CdcConfigurationError as exc:
            await reader.close()
            raise typer.BadParameter(str(exc)) from None
        console.print(f"cdc {slot}: capturing {', '.join(capture.tables)}")
        try:
            await CdcRunner(store, reader, capture, poll_interval=poll_interval, max_changes=max_changes).run(stop)
        finally:
            await reader.close()

    _with_store(database, work)


@cdc_app.command("status")
def status(source: SourceOption, slot: SlotOption, database: DatabaseOption = None) -> None:
    """The slot (position, lag in bytes and seconds, wal_status) and the checkpoint with its counts."""

    async def work(store: Store) -> None:
        reader = SlotReader(source, slot, ["unused"])
        try:
            slot_status = await reader.status()
        finally:
            await reader.close()
        checkpoint = await CdcRunner(store, reader, ChangeCapture("status")).checkpoint()
        rows = await store.fetch(
            "SELECT count(*) FROM tidings_dead_letters WHERE consumer = ? AND status = 'dead'", (f"cdc:{slot}",)
        )
        table = Table(title=f"cdc {slot}")
        table.add_column("what")
        table.add_column("value")
        table.add_row("slot exists", str(slot_status.exists))
        if slot_status.exists:
            table.add_row("active", str(slot_status.active))
            table.add_row("wal_status", str(slot_status.wal_status))
            table.add_row("slot position", str(slot_status.confirmed_lsn))
            table.add_row("lag (bytes)", f"{slot_status.lag_bytes:,}" if slot_status.lag_bytes is not None else "?")
        if checkpoint is not None:
            from tidings.cdc.pgoutput import format_lsn

            table.add_row("checkpoint", format_lsn(checkpoint.lsn))
            table.add_row("last source commit", str(checkpoint.commit_time))
            table.add_row("lag (seconds)", str(await _lag_seconds(store, checkpoint.commit_time, slot_status.lag_bytes)))
            table.add_row("translated / dropped / dead-lettered", f"{checkpoint.translated:,} / {checkpoint.dropped:,} / {checkpoint.dead_lettered:,}")
        table.add_row("dead letters waiting", str(rows[0][0]))
        console.print(table)

    _with_store(database, work)


async def _lag_seconds(store: Store, commit_time: str | None, lag_bytes: int | None) -> str:
    """Seconds since the last captured source commit while WAL is waiting, else 0."""
    from datetime import UTC, datetime

    if not lag_bytes or not commit_time:
        return "0"
    return f"{(datetime.now(UTC) - datetime.fromisoformat(commit_time)).total_seconds():.1f}"


@cdc_app.command("drop")
def drop(source: SourceOption, slot: SlotOption) -> None:
    """Drop the slot and its publication, so the source keeps no WAL for it (its checkpoint stays, for the record)."""

    async def work() -> list[str]:
        reader = SlotReader(source, slot, ["unused"])
        try:
            return await reader.drop()
        finally:
            await reader.close()

    try:
        dropped = asyncio.run(work())
    except ConnectionError as exc:  # already without the source's password
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    console.print(f"dropped {', '.join(dropped)}" if dropped else f"nothing to drop: no slot or publication named for {slot}")
