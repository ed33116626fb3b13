"""Dead letters carry the importance of their contract; operators list and count them by it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from typer.testing import CliRunner

from consumer_model import TOPIC, message, publish
from test_consumer import all_acked, local, running
from tidings.cli import app as cli
from tidings.messaging import IntegrationEvent, MessageRegistry
from tidings.runtime import Consumer, DeadLetters, HandlerContext, Retries
from tidings.store import Store, open_store


class PaymentTaken(IntegrationEvent, name="billing.PaymentTaken", importance="critical"):
    """Money was taken: losing it is a business incident."""

    amount_cents: int


class NewsletterSent(IntegrationEvent, name="marketing.NewsletterSent", importance="low"):
    """A newsletter went out."""

    issue: int


def importance_consumer(store: Store) -> Consumer:
    consumer = Consumer("billing-reader", store, local(store), registry=MessageRegistry(), topics=[TOPIC], retries=Retries(immediate=0, delayed=0))

    @consumer.handler(PaymentTaken)
    async def paid(event: PaymentTaken, ctx: HandlerContext) -> None:
        raise RuntimeError(f"the ledger refuses {event.amount_cents}")

    @consumer.handler(NewsletterSent)
    async def sent(event: NewsletterSent, ctx: HandlerContext) -> None:
        raise RuntimeError("the mail log is full")

    return consumer


async def _dead_letter_three(store: Store) -> None:
    # A payment whose handler fails, a garbage payment payload, a newsletter whose handler fails, and an unknown type
    await publish(local(store), [
        message("p1", 1, version=1, event_type="billing.PaymentTaken", payload=b'{"amount_cents": 500}'),
        message("p2", 1, version=1, event_type="billing.PaymentTaken", payload=b"{garbage"),
        message("n1", 1, version=1, event_type="marketing.NewsletterSent", payload=b'{"issue": 7}'),
        message("u1", 1, version=1, event_type="somebody.Else", payload=b"{}"),
    ])  # fmt: skip
    async with running(importance_consumer(store)) as run:
        await run.until(lambda: all_acked(store, "billing-reader"), "every message is settled")


async def test_each_dead_letter_carries_its_contracts_importance(store: Store) -> None:
    await _dead_letter_three(store)
    rows = await DeadLetters(store).list(consumer="billing-reader")
    assert sorted((row.key, row.importance) for row in rows) == [("n1", "low"), ("p1", "critical"), ("p2", "critical"), ("u1", None)]
    critical = await DeadLetters(store).list(importance="critical")
    assert sorted(row.key for row in critical) == ["p1", "p2"]
    assert await DeadLetters(store).counts_by_importance() == {"critical": 2, "low": 1, None: 1}


def test_operators_list_and_count_dead_letters_by_importance(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'importance.db'}"

    async def prepare() -> None:
        store = await open_store(url)
        try:
            await _dead_letter_three(store)
        finally:
            await store.close()

    asyncio.run(prepare())
    runner = CliRunner()
    wide = {"COLUMNS": "240"}
    critical = runner.invoke(cli, ["dlq", "list", "--importance", "critical", "--database", url], env=wide)
    assert critical.exit_code == 0, critical.output
    assert "billing.PaymentTaken" in critical.output and "marketing.NewsletterSent" not in critical.output
    assert "critical" in critical.output
    summary = runner.invoke(cli, ["dlq", "--database", url], env=wide)
    assert summary.exit_code == 0, summary.output
    assert "waiting, by importance: 2 critical, 1 low, 1 not a contract" in summary.output
    status = runner.invoke(cli, ["outbox", "status", "--database", url], env=wide)
    assert status.exit_code == 0, status.output
    assert "dead letters waiting, by importance: 2 critical, 1 low, 1 not a contract" in status.output
    wrong = runner.invoke(cli, ["dlq", "list", "--importance", "urgent", "--database", url], env=wide)
    assert wrong.exit_code == 2 and "'urgent' is not one of critical, high, normal, low" in wrong.output
