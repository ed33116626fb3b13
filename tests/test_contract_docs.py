"""`tidings contracts docs`: a readable catalog of every contract; and a deprecated version warns when published."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from examples.licensing.contracts import CONTRACTS, LicensePurchaseConfirmed
from model import License, OfferLicense, make_app
from tidings import Command, UnitOfWork
import tidings.messaging.contracts as contracts_module
from tidings.cli import app as cli
from tidings.contracts import catalog_of
from tidings.contracts.docs import markdown, page
from tidings.messaging import IntegrationEvent, MessageRegistry, new_id
from tidings.store import Store


def _platform_docs(out: Path) -> tuple[str, str]:
    result = CliRunner().invoke(cli, ["contracts", "docs", "--app", "examples.licensing.platform:context_parts", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return (out / "contracts.md").read_text(), (out / "contracts.html").read_text()


def _section(text: str, name: str) -> str:
    return text.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]


def test_the_catalog_lists_every_platform_contract_in_markdown_and_html(tmp_path: Path) -> None:
    md, html = _platform_docs(tmp_path)
    for contract in CONTRACTS:
        assert f"## {contract.message_name}\n" in md
        assert f"<section id='{contract.message_name}'><h2>{contract.message_name}</h2>" in html


def test_a_contract_entry_shows_versions_changes_producers_consumers_topic_key_importance_and_an_example(tmp_path: Path) -> None:
    md, html = _platform_docs(tmp_path)
    section = _section(md, "licensing.LicensePurchaseConfirmed")
    assert "- **topic**: licensing.license-purchase-confirmed" in section
    assert "- **partition key**: field license_id" in section
    assert "- **importance**: critical" in section
    assert "- **versions**: v1, v2" in section
    assert "- **producers**: licensing: translator purchase_confirmed" in section
    assert "- **consumers**: compliance: consumer compliance.licensing-events" in section
    assert "- **deprecation**: none" in section
    assert "- v1 → v2: `currency` field added (required)" in section
    # The example payload is one the current class reads
    example = json.loads(re.search(r"```json\n(.*?)\n```", section, re.S).group(1))  # type: ignore[union-attr]
    assert isinstance(msgspec.convert(example, LicensePurchaseConfirmed), LicensePurchaseConfirmed)
    assert "<dt>importance</dt><dd>critical</dd>" in html
    assert "v1 → v2: `currency` field added (required)" in html


def test_a_type_change_between_versions_and_a_deprecation_are_shown() -> None:
    class Old(IntegrationEvent, name="shop.Refund", version=1, deprecated_after="2027-03-31"):
        """A refund, in cents."""

        amount: int

    class New(IntegrationEvent, name="shop.Refund", version=2, importance="high"):
        """A refund, as a decimal amount."""

        amount: float
        reason: str = ""

    registry = MessageRegistry([New])
    registry.upcaster(New, 1)(lambda data: {**data, "amount": data["amount"] / 100})
    catalog = catalog_of(registry, Old)
    section = _section(markdown(catalog), "shop.Refund")
    assert "- **versions**: v1, v2" in section
    assert "- **deprecation**: v1 after 2027-03-31" in section
    assert "- **importance**: high" in section
    assert "- **producers**: unknown (not found in translators, publish calls or sagas)" in section
    assert "- v1 → v2: `amount` type changed from integer to number; `reason` field added (optional, with a default)" in section
    assert "<dd>v1 after 2027-03-31</dd>" in page(catalog)


class SendLegacy(Command):
    license_id: str


class LegacyNotice(IntegrationEvent, name="shop.LegacyNotice", version=1, deprecated_after="2020-01-01"):
    """A notice the shop stopped wanting in 2020."""

    license_id: str


async def test_publishing_a_version_past_its_deprecation_date_logs_one_warning(
    store: Store, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a fresh process's memory of what it warned about (each store parameter runs in this one)
    monkeypatch.setattr(contracts_module, "_warned", set())
    # And a handler that still publishes a version deprecated since 2020
    app = make_app(store)

    @app.command_handler(SendLegacy)
    async def send(command: SendLegacy, uow: UnitOfWork) -> None:
        await uow.get(License, command.license_id)
        uow.publish(LegacyNotice(license_id=command.license_id))

    license_id = new_id()
    await app.handle(OfferLicense(license_id=license_id, product="Editor"))
    # When it publishes three times
    with caplog.at_level(logging.WARNING, logger="tidings.contracts"):
        for _ in range(3):
            await app.handle(SendLegacy(license_id=license_id))
    # Then one warning says what to do, and every message was still published
    warnings = [r.getMessage() for r in caplog.records if "shop.LegacyNotice" in r.getMessage()]
    assert warnings == [
        "publishing shop.LegacyNotice v1, deprecated after 2020-01-01: move its producers to the newest version, then stop publishing this one"
    ]
    assert len([row for row in await store.read_outbox() if row.event_type == "shop.LegacyNotice"]) == 3
