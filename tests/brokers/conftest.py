"""The broker conformance fixtures: one ``broker_server`` per ``server_<name>.py`` module found here.

Each module provides ``async def start(tmp_path: Path) -> BrokerServer``; the suite in
test_broker_conformance.py runs unchanged against every one. A new broker is done when it passes.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker_server import BrokerServer

HERE = Path(__file__).parent
# The models and helpers of tests/ are shared with the broker tests.
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))
SERVERS = sorted(p.stem.removeprefix("server_") for p in HERE.glob("server_*.py"))
#: The servers that promise to keep what they confirmed across a kill -9 (each module's ``SURVIVES_KILL``).
DURABLE_SERVERS = [name for name in SERVERS if getattr(importlib.import_module(f"server_{name}"), "SURVIVES_KILL", False)]


async def _serve(name: str, tmp_path: Path) -> AsyncIterator[BrokerServer]:
    """Start the server of ``server_<name>.py``, hand it over, close it afterwards."""
    module = importlib.import_module(f"server_{name}")
    server: BrokerServer = await module.start(tmp_path)
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture(params=SERVERS)
async def broker_server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BrokerServer]:
    """A running broker server of each kind (the conformance parameter)."""
    async for server in _serve(request.param, tmp_path):
        yield server


@pytest.fixture(params=DURABLE_SERVERS)
async def durable_broker_server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BrokerServer]:
    """A running broker server of each kind that promises to survive a kill -9 with what it confirmed."""
    async for server in _serve(request.param, tmp_path):
        yield server
