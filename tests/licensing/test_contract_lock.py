"""The platform's contracts are locked: the lock matches the code, and a broken field fails the check naming it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "400", "PYTHONPATH": str(cwd)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_committed_lock_matches_the_platform() -> None:
    result = _run(ROOT, "-m", "examples.licensing", "contracts", "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FULL     licensing.LicensePurchaseConfirmed" in result.stdout
    assert "BREAKING" not in result.stdout


def test_a_field_broken_in_a_copy_of_the_platform_fails_the_check_naming_it(tmp_path: Path) -> None:
    # Given a copy of the platform whose LicensePurchaseConfirmed v2 now sends its price as text
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    contracts = tmp_path / "examples" / "licensing" / "contracts" / "licensing.py"
    source = contracts.read_text()
    head, tail = source.split("class LicensePurchaseConfirmed(", 1)
    assert "    price_cents: int\n" in tail
    contracts.write_text(head + "class LicensePurchaseConfirmed(" + tail.replace("    price_cents: int\n", "    price_cents: str\n", 1))
    # When its contracts are checked against the committed lock, by either entry point
    lock = ROOT / "examples" / "licensing" / "contracts.lock.json"
    by_platform = _run(tmp_path, "-m", "examples.licensing", "contracts", "check")
    by_cli = _run(tmp_path, "-m", "tidings.cli", "contracts", "check", "--app", "examples.licensing.platform:context_parts", "--lock", str(lock))
    # Then both exit 1, naming the contract, the version, the field, and the fix
    for result in (by_platform, by_cli):
        assert result.returncode == 1, result.stdout + result.stderr
        assert "BREAKING licensing.LicensePurchaseConfirmed" in result.stdout
        assert "v2 price_cents: type changed from integer to string" in result.stdout
        assert "fix: bump to version 3 and add an upcaster from 2" in result.stdout
        assert "FULL     licensing.LicenseUsageReported" in result.stdout


def test_export_writes_the_platform_schemas_and_documents(tmp_path: Path) -> None:
    result = _run(ROOT, "-m", "examples.licensing", "contracts", "export", "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "schemas" / "licensing.LicensePurchaseConfirmed.v1.schema.json").exists()
    assert sorted(p.name for p in (tmp_path / "asyncapi").iterdir()) == [
        "asset_processing.asyncapi.json", "compliance.asyncapi.json", "licensing.asyncapi.json",
    ]  # fmt: skip
