"""The quickstart story (`python -m examples.story`) runs in the suite, on SQLite and on PostgreSQL, and must observe every outcome."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

from support import POSTGRES_URL, require_service

ROOT = Path(__file__).resolve().parents[1]


def run_story(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "examples.story", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_the_story_observes_every_expected_outcome_on_sqlite() -> None:
    result = run_story()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "expected outcomes observed" in result.stdout


async def test_the_story_observes_every_expected_outcome_on_postgresql() -> None:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    import psycopg
    from psycopg.sql import SQL, Identifier

    schema = f"story_{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        await conn.execute(SQL("CREATE SCHEMA {}").format(Identifier(schema)))
        try:
            result = run_story("--database", f"{POSTGRES_URL}?options={quote(f'-c search_path={schema}')}")
        finally:
            await conn.execute(SQL("DROP SCHEMA {} CASCADE").format(Identifier(schema)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "expected outcomes observed" in result.stdout
