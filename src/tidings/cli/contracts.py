"""``tidings contracts export | lock | check | docs``: publish, lock and check the integration events an application owns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from tidings.cli import app, console
from tidings.cli.loading import import_attribute
from tidings.contracts.catalog import Catalog, catalog_of, load_target

__all__ = ["contracts_app"]

contracts_app = typer.Typer(help="Integration-event contracts: export (JSON Schema, AsyncAPI), lock, check, docs.", no_args_is_help=True)
app.add_typer(contracts_app, name="contracts")

AppOption = Annotated[
    list[str],
    typer.Option(
        "--app",
        "-a",
        help="module:attribute of an Application, context parts, a Consumer, a SagaRunner, a registry, a module of "
        "contracts, a list of those, or a function returning one (repeatable)",
    ),
]
LockOption = Annotated[Path, typer.Option("--lock", help="the lock file (committed with the code)")]


def read_catalog(specs: list[str]) -> Catalog:
    """The catalog of everything the ``--app`` specs name; BadParameter saying what to fix."""
    targets: list[Any] = []
    for spec in specs:
        try:
            targets.append(load_target(import_attribute(spec, what="--app", example="shop.wiring:application")))
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    try:
        catalog = catalog_of(*targets)
    except TypeError as exc:
        raise typer.BadParameter(str(exc)) from None
    if not catalog.contracts:
        raise typer.BadParameter(
            f"found no integration events in {', '.join(specs)}: name the application (or its parts, consumers, "
            "registry or contracts module) that publishes or reads them"
        )
    return catalog


@contracts_app.command("export")
def export(apps: AppOption, out: Annotated[Path, typer.Option("--out", "-o", help="directory to write into")]) -> None:
    """Write one JSON Schema (2020-12) per contract version and one AsyncAPI 3.0 document per application."""
    from tidings.contracts.schema import write_export

    catalog = read_catalog(apps)
    written = write_export(catalog, out)
    console.print(f"wrote {len(written)} files under {out}: {len(catalog.contracts)} contracts, {len(catalog.applications)} applications")
