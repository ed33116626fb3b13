"""What tests share besides fixtures: the PostgreSQL URL, the CI switch, and the service check.

Outside CI a test whose service is unreachable is skipped with the reason; with CI=true it fails,
so a missing server can never turn into a green run.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable
from typing import NoReturn

import pytest

from tidings.store import Store

POSTGRES_URL = os.environ.get("TIDINGS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

StoreFactory = Callable[[], Awaitable[Store]]


def unavailable(reason: str) -> NoReturn:
    """Fail under CI, skip elsewhere: a missing server or binary must never turn into a green CI run."""
    if IN_CI:
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(f"{reason}; under CI=true this test fails instead")


def require_service(name: str, host: str, port: int) -> None:
    """Fail (under CI) or skip (elsewhere) unless ``host:port`` accepts a TCP connection."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError as exc:
        unavailable(f"{name} is not reachable on {host}:{port} ({exc}); start it (see .ci/run)")
