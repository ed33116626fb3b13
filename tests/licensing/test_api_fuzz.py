"""The platform's HTTP API keeps every promise of its OpenAPI document under schemathesis (fixed seed, bounded count).

Schemathesis generates requests from the document the API publishes (valid ones and ones that break
the schema) and checks every answer against it: no 5xx, every status and body documented, every
schema-valid request accepted, every schema-violating one refused. The app runs in-process (ASGI)
on a platform opened by its lifespan, on a fresh SQLite file and the local broker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, seed, settings
from starlette.types import Receive, Scope, Send

from examples.licensing.api import create_app
from examples.licensing.kernel import Settings
from examples.licensing.platform import Platform

#: Examples per operation; with a fixed seed the run is the same every time (both can be overridden
#: from the environment for a longer or different search: TIDINGS_FUZZ_EXAMPLES, TIDINGS_FUZZ_SEED).
EXAMPLES = int(os.environ.get("TIDINGS_FUZZ_EXAMPLES", "25"))
SEED = int(os.environ.get("TIDINGS_FUZZ_SEED", "20261204"))


class _PlatformApp:
    """An ASGI app whose lifespan opens a platform and then serves its API (what uvicorn would run)."""

    def __init__(self) -> None:
        self.inner: Any = None

    @contextlib.asynccontextmanager
    async def _platform(self) -> AsyncIterator[None]:
        # A fresh database for each lifespan (loading the schema runs one of its own).
        folder = Path(tempfile.mkdtemp(prefix="tidings-fuzz-"))
        platform = await Platform(f"sqlite:///{folder / 'fuzz.db'}", "local:", settings=Settings(stall_after=60)).open()
        assert platform.projector is not None
        await platform.projector.prepare()  # as Platform.start does for the api role
        self.inner = create_app(platform)
        try:
            yield
        finally:
            await platform.close()
            shutil.rmtree(folder, ignore_errors=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            assert message["type"] == "lifespan.startup"
            async with self._platform():
                await send({"type": "lifespan.startup.complete"})
                message = await receive()
                await send({"type": "lifespan.shutdown.complete"})
            return
        await self.inner(scope, receive, send)


@schemathesis.serializer("application/x-ndjson")
def _ndjson(context: schemathesis.SerializationContext, value: Any) -> bytes | None:
    # The partner feed documents NDJSON as one string, sent as the text it is. Every byte string
    # is text on the wire, so a "not a string" case has no body to send: it goes without one.
    return value.encode() if isinstance(value, str) else None


APP = _PlatformApp()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@seed(SEED)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_answer_of_the_api_is_the_documented_one(case: schemathesis.Case) -> None:
    case.call_and_validate()
