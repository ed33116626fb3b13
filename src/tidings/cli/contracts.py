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


@contracts_app.command("lock")
def lock_command(apps: AppOption, out: Annotated[Path, typer.Option("--out", "-o", help="the lock file to write")] = Path("contracts.lock.json")) -> None:
    """Write the current schema of every contract version to a lock file, to commit with the code."""
    from tidings.contracts.compat import lock

    catalog = read_catalog(apps)
    lock(catalog, out)
    versions = sum(len(contract.versions) for contract in catalog.contracts.values())
    console.print(f"locked {len(catalog.contracts)} contracts ({versions} versions) in {out}", soft_wrap=True, highlight=False)


@contracts_app.command("check")
def check_command(apps: AppOption, lock_file: LockOption = Path("contracts.lock.json")) -> None:
    """Compare the code's contracts with the lock: a verdict per contract; exit 1 if one is BREAKING."""
    from tidings.contracts.compat import Verdict, check, read_lock

    catalog = read_catalog(apps)
    try:
        locked = read_lock(lock_file)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--lock") from None
    reports = check(catalog, locked)
    colours = {Verdict.FULL: "green", Verdict.BACKWARD: "yellow", Verdict.FORWARD: "yellow", Verdict.BREAKING: "red"}
    for report in reports:
        note = f" — {report.note}" if report.note else ""
        console.print(f"[{colours[report.verdict]}]{report.verdict.value:<8}[/] {report.name}{note}", soft_wrap=True, highlight=False)
        for change in report.changes:
            console.print(f"    {change.describe()}", soft_wrap=True, highlight=False, markup=False)
    breaking = [r.name for r in reports if r.verdict is Verdict.BREAKING]
    if breaking:
        console.print(f"[red]{len(breaking)} breaking contract(s)[/red]: {', '.join(breaking)}", soft_wrap=True, highlight=False)
        raise typer.Exit(1)
    console.print("no breaking change", highlight=False)


@contracts_app.command("docs")
def docs(apps: AppOption, out: Annotated[Path, typer.Option("--out", "-o", help="directory to write into")]) -> None:
    """Write the readable catalog (contracts.md and contracts.html): versions, changes, producers, consumers, examples."""
    from tidings.contracts.docs import write_docs

    written = write_docs(read_catalog(apps), out)
    console.print(f"wrote {', '.join(str(p) for p in written)}", soft_wrap=True, highlight=False)
