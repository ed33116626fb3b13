"""``tidings reconcile``: compare source → outbox → broker → inboxes → read models per business key; repair with --repair.

Without ``--app`` the toolkit's own checks run (delivery to the consumers named with ``--consumer
NAME=TOPIC,TOPIC``, parked rows, dead letters, broker copies on the local broker). ``--app
module:function`` names ``function(store) -> Reconciler`` with the application's checks (source of
truth, read models) as well. Exit status: 0 when nothing was found (or everything found was
repaired), 1 when findings remain, 2 on a usage or connection error.
"""

from __future__ import annotations

import json
import shlex
import sys
from typing import Annotated, Any

import typer

from tidings.cli import DatabaseOption, _with_store, app, console
from tidings.cli.loading import import_attribute
from tidings.runtime.reconcile import BrokerCopiesCheck, DeliveryCheck, Reconciler, Report
from tidings.store import Store

__all__ = ["reconcile"]


def _reconciler(store: Store, spec: str | None, consumers: list[str], grace: float) -> Reconciler:
    if spec:
        try:
            factory: Any = import_attribute(spec, what="--app", example="shop.reconciling:reconciler")
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        try:
            built = factory(store, grace=grace)
        except TypeError:
            built = factory(store)
        if not isinstance(built, Reconciler):
            raise typer.BadParameter(f"{spec} returned a {type(built).__name__}; it must return a tidings.runtime.reconcile.Reconciler")
        return built
    topics: dict[str, list[str]] = {}
    for item in consumers:
        name, _, listed = item.partition("=")
        if not name or not listed:
            raise typer.BadParameter(f"--consumer takes NAME=TOPIC[,TOPIC…], got {item!r}")
        topics[name] = [t for t in listed.split(",") if t]
    return Reconciler(store, [DeliveryCheck(topics, grace=grace), BrokerCopiesCheck()])


@app.command("reconcile")
def reconcile(
    database: DatabaseOption = None,
    app_spec: Annotated[str | None, typer.Option("--app", "-a", help="module:function(store) -> Reconciler with the application's checks")] = None,
    consumer: Annotated[list[str] | None, typer.Option("--consumer", "-c", help="NAME=TOPIC,TOPIC (without --app)")] = None,
    repair: Annotated[bool, typer.Option("--repair", help="apply the safe repairs (audited in tidings_reconcile_audit)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    limit: Annotated[int, typer.Option(help="at most this many repairs per run")] = 100,
    rate: Annotated[float, typer.Option(help="repairs per second at most")] = 20.0,
    cooldown: Annotated[float, typer.Option(help="seconds before the same repair of the same key may run again")] = 60.0,
    grace: Annotated[float, typer.Option(help="changes younger than this many seconds may still be in flight: not reported")] = 30.0,
) -> None:
    """Report missing transitions, duplicates and stuck work per business key; with --repair, fix what is safe."""
    command_line = shlex.join(["tidings", *sys.argv[1:]])

    async def work(store: Store) -> Report:
        reconciler = _reconciler(store, app_spec, consumer or [], grace)
        report = await reconciler.find()
        if repair:
            await reconciler.repair(report, command_line=command_line, limit=limit, per_second=rate, cooldown=cooldown)
        return report

    report = _with_store(database, work)
    if as_json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        console.print(report.text(), highlight=False, soft_wrap=True)
    open_findings = [f for f in report.findings if not any(r.finding is f and r.outcome.startswith("done") for r in report.repairs)]
    raise typer.Exit(1 if open_findings else 0)
