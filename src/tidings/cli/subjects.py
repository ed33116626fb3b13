"""``tidings subjects``: forget a data subject (crypto-shredding), and make a master key for a new deployment."""

from __future__ import annotations

from typing import Annotated

import typer

from tidings.cli import DatabaseOption, _with_store, console
from tidings.messaging.personal import MASTER_KEY_ENV, MasterKey, PersonalDataError
from tidings.store.subject_keys import forget_subject
from tidings.store import Store

__all__ = ["subjects_app"]

subjects_app = typer.Typer(help="Data subjects whose personal fields are sealed with their own key.", no_args_is_help=True)


@subjects_app.command("forget")
def forget(
    subject: Annotated[str, typer.Argument(help="the data subject's id, as held by the field that Personal(subject=…) names")],
    database: DatabaseOption = None,
) -> None:
    """Delete the subject's key: from now on every read of their personal fields sees the mask."""

    async def work(store: Store) -> bool:
        return await forget_subject(store, subject)

    try:
        forgotten = _with_store(database, work)
    except PersonalDataError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    # The subject's id is not echoed: what an operator's terminal logs should not need shredding too.
    if forgotten:
        console.print("forgotten: the subject's key is deleted; their personal fields now read as masks")
    else:
        console.print(f"nothing to forget: no key for that subject under this {MASTER_KEY_ENV} (none of their data is sealed)")


@subjects_app.command("new-key")
def new_key() -> None:
    """Print a fresh random master key, for TIDINGS_MASTER_KEY of a new deployment (keep it secret, back it up)."""
    typer.echo(MasterKey.generate())
