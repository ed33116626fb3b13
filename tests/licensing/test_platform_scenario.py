"""The ``make demo`` scenario runs in the suite: every expected outcome is observed on SQLite and on servers."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from rich.console import Console

from examples.licensing.scenario import ScenarioResult, demo_settings, run_scenario
from support import POSTGRES_URL, require_service

NATS_URL = "nats://127.0.0.1:4222"
REDIS_URL = "redis://127.0.0.1:6379/0"


def _require_postgres() -> None:
    parts = urlsplit(POSTGRES_URL)
    require_service("PostgreSQL", parts.hostname or "127.0.0.1", parts.port or 5432)


async def run(database: str | None, broker: str | None) -> tuple[ScenarioResult, str]:
    """Run the scenario with its output captured; the result and what it printed."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=140, force_terminal=False)
    result = await run_scenario(database, broker, out=console, progress=console)
    return result, buffer.getvalue()


def assert_every_outcome_observed(result: ScenarioResult, printed: str) -> None:
    failed = [f"{outcome.name}: {outcome.detail}" for outcome in result.failed]
    assert not failed, "outcomes not observed:\n" + "\n".join(failed) + "\n\n" + printed[-4000:]
    names = {outcome.name for outcome in result.outcomes}
    # The story is all there, not a lucky subset: each part of it was checked.
    for part in (
        "every good asset is searchable",
        "the corrupt asset is dead-lettered by the extractor, after retries",
        "a second purchase of the same license is refused (409)",
        "Compliance opened an investigation for the license",
        "nothing accepted is lost: distinct records = applied + dead-lettered",
        "the story's trace spans asset_processing, licensing and compliance",
    ):
        assert part in names, f"the scenario no longer checks {part!r}"
    assert "SearchIndex (asset_processing)" in printed and "ComplianceAlertsFeed" in printed
    assert f"correlation {result.correlation_id}" in printed  # the trace tree's root


async def test_the_scenario_observes_every_outcome_on_sqlite_and_the_local_broker() -> None:
    started = time.perf_counter()
    result, printed = await run(None, None)
    assert_every_outcome_observed(result, printed)
    assert time.perf_counter() - started < 60, "the demo must finish within a minute on SQLite"


async def test_the_scenario_observes_every_outcome_on_postgresql_and_nats() -> None:
    _require_postgres()
    require_service("NATS", "127.0.0.1", 4222)
    result, printed = await run(POSTGRES_URL, NATS_URL)
    assert_every_outcome_observed(result, printed)


async def test_the_scenario_observes_every_outcome_on_postgresql_and_redis() -> None:
    _require_postgres()
    require_service("Redis", "127.0.0.1", 6379)
    result, printed = await run(POSTGRES_URL, REDIS_URL)
    assert_every_outcome_observed(result, printed)


async def test_a_missing_context_fails_the_scenario_instead_of_faking_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes the import fail, as if Compliance's wiring had not been written.
    monkeypatch.setitem(sys.modules, "examples.licensing.compliance.infrastructure.wiring", None)
    result, printed = await run(None, None)
    assert not result.ok
    assert [outcome.name for outcome in result.failed] == ["context compliance is built"]
    assert "compliance.infrastructure.wiring" in result.failed[0].detail


def test_the_demo_settings_leave_good_assets_time_to_finish() -> None:
    settings = demo_settings()
    # Good assets are ready well under a second; the stall deadline must not catch them on a busy machine.
    assert settings.stall_after >= 5
    assert settings.immediate_retries + settings.delayed_retries >= 1  # the corrupt file is retried before it dies


async def test_the_platform_refuses_to_start_without_the_master_key_of_its_buyer_data(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from examples.licensing.platform import Platform
    from tidings.messaging.personal import MASTER_KEY_ENV, MasterKeyMissing

    monkeypatch.delenv(MASTER_KEY_ENV)
    with pytest.raises(MasterKeyMissing, match="the licensing platform .its buyer data is personal. needs the master key"):
        await Platform(f"sqlite:///{tmp_path / 'p.db'}", "local:").open()
