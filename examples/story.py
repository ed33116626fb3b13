"""The main job: a licensing story on the embedded default (SQLite, no servers) that checks itself.

Run with ``python -m examples.story [--database URL]`` (``make demo`` runs the reference platform). It exits 0 only if
every expected outcome was observed, and names each one that was not.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
from rich.console import Console
from rich.rule import Rule
from rich.tree import Tree

from examples.quickstart.application import build
from examples.quickstart.domain import License, OfferLicense, PurchaseLicense, ReportUsage
from tidings import DomainError, MessageContext, ValidationError, open_store
from tidings.brokers import open_broker
from tidings.cli.render import journal_table, outbox_table
from tidings.messaging import MessageTooLarge
from tidings.messaging.redaction import redact_url
from tidings.runtime import Relay
from tidings.store import Store
from tidings.store.outbox import Outbox

console = Console()


class Checks:
    """Expected outcomes of the story, observed one by one."""

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.passed = 0

    def expect(self, what: str, ok: bool, detail: str = "") -> None:
        if ok:
            self.passed += 1
            console.print(f"  [green]✓[/green] {what}")
        else:
            self.failed.append(what)
            console.print(f"  [red]✗ {what}[/red] {detail}")

    async def refused(self, what: str, error: type[Exception], action: Callable[[], Awaitable[object]]) -> None:
        try:
            await action()
        except error as exc:
            self.expect(what, True)
            console.print(f"      [dim]{type(exc).__name__}: {exc}[/dim]")
        else:
            self.expect(what, False, f"(no {error.__name__} raised)")


def trace_tree(correlation_id: str, envelopes: list[dict], command_names: dict[str, str]) -> Tree:
    """The causation tree of one correlation id: command → domain events → integration events."""
    children: dict[str, list[dict]] = {}
    for envelope in envelopes:
        children.setdefault(envelope["causation_id"], []).append(envelope)
    event_ids = {envelope["event_id"] for envelope in envelopes}
    tree = Tree(f"correlation …{correlation_id[-12:]}")

    def grow(node: Tree, parent_id: str) -> None:
        for child in children.get(parent_id, []):
            where = f"{child['aggregate_type']} {child['aggregate_id']} v{child['aggregate_version']}"
            style = "magenta" if "." in child["event_type"] else "cyan"  # contracts have dotted names
            grow(node.add(f"[{style}]{child['event_type']}[/{style}] {where}"), child["event_id"])

    for cause in children:
        if cause not in event_ids:
            grow(tree.add(f"[bold]{command_names.get(cause, 'command')}[/bold] …{cause[-8:]}"), cause)
    return tree


async def story(store: Store, checks: Checks) -> None:
    app = build(store)
    ctx = MessageContext(user_id="buyer-ada", tenant="acme")

    console.print(Rule("1. licenses are offered"))
    # The licenses belong to the tenant "acme": another tenant could neither load nor buy them.
    for n in range(1, 4):
        await app.handle(
            OfferLicense(license_id=f"lic-{n}", asset_id=f"asset-{n}", price_cents=1500 * n, allowed_uses=2),
            context=MessageContext(tenant="acme"),
        )
    checks.expect("three licenses offered", await store.count("aggregate_state") == 3)

    console.print(Rule("2. purchases, one refused by an invariant"))
    bought = await app.handle(PurchaseLicense(license_id="lic-1", buyer_id="buyer-ada"), context=ctx)
    await checks.refused(
        "a second purchase of lic-1 is refused",
        DomainError,
        lambda: app.handle(PurchaseLicense(license_id="lic-1", buyer_id="buyer-bob")),
    )
    checks.expect("the purchase published LicensePurchaseConfirmed", [e.event_type for e in bought.published] == ["licensing.LicensePurchaseConfirmed"])

    console.print(Rule("3. usage past the allowance, in the purchase's correlation"))
    follow = MessageContext(user_id="buyer-ada", tenant="acme", correlation_id=bought.correlation_id, causation_id=bought.command_id)
    within = await app.handle(ReportUsage(license_id="lic-1", uses=2), context=follow)
    over = await app.handle(ReportUsage(license_id="lic-1", uses=1), context=follow)
    checks.expect(
        "going past the allowance records UsageExceededLicense",
        [e.event_type for e in over.events] == ["UsageReported", "UsageExceededLicense"],
    )
    checks.expect("…and publishes UsageViolationDetected", [e.event_type for e in over.published] == ["licensing.UsageViolationDetected"])

    console.print(Rule("4. bad input is refused before anything is written"))
    journal_before = await store.count("journal")
    await checks.refused(
        "a wrong field type names the field",
        ValidationError,
        lambda: app.handle(ReportUsage(license_id="lic-2", uses="many")),  # type: ignore[arg-type]
    )
    await checks.refused(
        "a rule on a value names the field",
        ValidationError,
        lambda: app.handle(OfferLicense(license_id="lic-9", asset_id="a", price_cents=-5, allowed_uses=1)),
    )
    await checks.refused(
        "usage before purchase is refused",
        DomainError,
        lambda: app.handle(ReportUsage(license_id="lic-2", uses=1)),
    )
    app.max_message_bytes = 200
    await checks.refused(
        "an oversized message is refused at write time",
        MessageTooLarge,
        lambda: app.handle(OfferLicense(license_id="lic-big", asset_id="x" * 500, price_cents=1, allowed_uses=1)),
    )
    app.max_message_bytes = 256 * 1024
    checks.expect("nothing was written by refused commands", await store.count("journal") == journal_before)

    console.print(Rule("5. what was committed"))
    license = await app.load(License, "lic-1")
    checks.expect("lic-1 reloads with its state", license.used == 3 and license.buyer_id == "buyer-ada")
    console.print(journal_table(await store.read_journal()))
    outbox = await store.read_outbox()
    console.print(outbox_table(outbox))
    checks.expect("the outbox holds exactly the two integration events", len(outbox) == 2)
    envelopes = [msgspec.json.decode(row.envelope) for row in outbox]
    checks.expect(
        "every outbox envelope carries the user, tenant and correlation",
        all(e["user_id"] == "buyer-ada" and e["tenant"] == "acme" and e["correlation_id"] == bought.correlation_id for e in envelopes),
    )

    console.print(Rule("6. the trace of one correlation id"))
    journal = [msgspec.json.decode(e.envelope) for e in await store.read_correlation(bought.correlation_id)]
    published = [envelope for envelope in envelopes if envelope["correlation_id"] == bought.correlation_id]
    names = {bought.command_id: "PurchaseLicense", within.command_id: "ReportUsage", over.command_id: "ReportUsage"}
    console.print(trace_tree(bought.correlation_id, journal + published, names))
    checks.expect("the trace holds the purchase, both usage reports and both publications", len(journal) == 4 and len(published) == 2)

    console.print(Rule("7. the relay delivers the outbox to the broker"))
    broker = await open_broker("local:", store=store)
    subscription = await broker.subscribe(
        ["licensing.LicensePurchaseConfirmed", "licensing.UsageViolationDetected"], "compliance"
    )
    await Relay(store, broker).drain(timeout=10)
    received = []
    async for delivery in subscription:
        received.append(delivery)
        await delivery.ack()
        console.print(f"  compliance received [magenta]{delivery.topic}[/magenta] key={delivery.key} {delivery.payload.decode()}")
        if len(received) == 2:
            break
    await subscription.close()
    status = await Outbox(store).status()
    checks.expect("both integration events reached the consumer group, in commit order",
                  [d.topic for d in received] == ["licensing.LicensePurchaseConfirmed", "licensing.UsageViolationDetected"])
    checks.expect("the envelope travelled as headers", all(d.headers.get("tidings-correlation_id") == bought.correlation_id for d in received))
    checks.expect("the outbox is drained", status.backlog == 0)


async def main(database: str | None) -> int:
    started = time.perf_counter()
    checks = Checks()
    with tempfile.TemporaryDirectory() as tmp:
        url = database or f"sqlite:///{Path(tmp) / 'story.db'}"
        console.print(f"[bold]tidings quickstart[/bold] on {redact_url(url)}")
        store = await open_store(url, migrate=True)
        try:
            await story(store, checks)
        finally:
            await store.close()
    elapsed = time.perf_counter() - started
    console.print(Rule())
    if checks.failed:
        console.print(f"[red]{len(checks.failed)} expected outcome(s) not observed:[/red] " + "; ".join(checks.failed))
        return 1
    console.print(f"[green]all {checks.passed} expected outcomes observed[/green] in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database", help="store URL (default: a fresh SQLite file); postgresql://… uses a server")
    sys.exit(asyncio.run(main(parser.parse_args().database)))
