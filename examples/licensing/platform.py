"""The composition root: one store, one broker, the three bounded contexts, and the processes that run them.

``Platform`` opens the store and the broker named by URL (the embedded default: a SQLite file and
the ``local:`` broker, the store's own log), builds every context with one :class:`Settings`
through its ``<context>/infrastructure/wiring.py`` ``build(store, settings)``, and runs the roles::

    relay       the outbox → the broker
    consumers   every context's consumers (integration events, internal topics, saga commands)
    projector   every projection, from the journal
    scheduler   the saga deadlines (one Scheduler per saga runner)
    api         the HTTP API (uvicorn), see examples/licensing/api.py

All roles in one process on the embedded default; the same code runs each role as its own process
(``python -m examples.licensing run-roles --roles relay``) on PostgreSQL and a real broker. This is
the only module besides the tests that knows all three contexts; the contexts know only
``contracts/`` and ``kernel.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from examples.licensing.contracts import contract_registry, register_contracts
from examples.licensing.kernel import ContextParts, Settings
from tidings.brokers import Broker, open_broker
from tidings.messaging import MessageRegistry
from tidings.messaging.personal import master_key
from tidings.store.subject_keys import check_master_key
from tidings.runtime import Consumer, Projection, Projector, Relay, SagaRunner, Scheduler
from tidings.store import Store, open_store
from tidings.store.names import sql_name

__all__ = ["CONTEXTS", "ROLES", "Platform", "context_parts", "default_database_url"]

log = logging.getLogger("examples.licensing.platform")

#: The bounded contexts, in the order they are built and mounted (``/<name>`` in the API).
CONTEXTS: tuple[str, ...] = ("asset_processing", "licensing", "compliance")
#: Every role a platform process can run.
ROLES: tuple[str, ...] = ("relay", "consumers", "projector", "scheduler", "api")


def default_database_url() -> str:
    """The embedded default store: a SQLite file in the system's temporary directory."""
    return f"sqlite:///{Path(tempfile.gettempdir()) / 'tidings-demo.db'}"


@dataclass(slots=True)
class _Running:
    """The tasks of the roles this process runs, and the event that stops them."""

    stop: asyncio.Event
    tasks: dict[str, asyncio.Task[Any]] = field(default_factory=dict)


class Platform:
    """The media-licensing platform on one store and one broker: its contexts and the roles that run them."""

    def __init__(
        self,
        database_url: str | None = None,
        broker_url: str | None = None,
        *,
        settings: Settings | None = None,
        schema: str | None = None,
        broker_options: dict[str, Any] | None = None,
        contexts: Sequence[str] = CONTEXTS,
        api_host: str = "127.0.0.1",
        api_port: int = 8000,
    ) -> None:
        self.database_url = database_url or os.environ.get("TIDINGS_DATABASE_URL") or default_database_url()
        self.broker_url = broker_url or os.environ.get("TIDINGS_BROKER_URL") or "local:"
        self.settings = settings or Settings()
        # Checked here, not only by the store: on SQLite the schema is unused, and a mistyped one
        # should still be reported rather than silently ignored.
        self.schema = None if schema is None else sql_name(schema, "PostgreSQL schema name (--schema)")
        self.broker_options = dict(broker_options or {})
        self.context_names = tuple(contexts)
        self.api_host = api_host
        self.api_port = api_port
        self.store: Store = None  # type: ignore[assignment]  # set by open()
        self.broker: Broker = None  # type: ignore[assignment]
        #: The contexts that were built, by name.
        self.contexts: dict[str, ContextParts] = {}
        #: Every contract and upcaster of the platform (for reading any published message, e.g. in a trace).
        self.registry: MessageRegistry = contract_registry()
        #: Contexts that could not be built, with the reason (a wiring module missing or failing).
        self.missing: dict[str, str] = {}
        self.projector: Projector | None = None
        self.relay: Relay | None = None
        self.schedulers: list[Scheduler] = []
        self._running: _Running | None = None

    # -- opening and closing -------------------------------------------------------------------

    async def open(self) -> Platform:
        """Open the store (migrated) and the broker, then build every context on them."""
        # Buyer data is personal (sealed per buyer): without the master key nothing could be
        # written or read, so say so now rather than at the first purchase.
        master_key("the licensing platform (its buyer data is personal)")
        options: dict[str, Any] = {}
        if self.schema and self.database_url.startswith(("postgresql://", "postgres://")):
            options["schema"] = self.schema
        self.store = await open_store(self.database_url, migrate=True, **options)
        try:
            await check_master_key(self.store, "the licensing platform (its buyer data is personal)")
            self.broker = await open_broker(self.broker_url, store=self.store, **self.broker_options)
        except BaseException:
            await self.store.close()
            raise
        for name in self.context_names:
            self._build(name)
        projections: list[Projection] = [p for parts in self.contexts.values() for p in parts.projections]
        self.projector = Projector(self.store, projections) if projections else None
        self.relay = Relay(self.store, self.broker, idle_wait=0.2)
        self.schedulers = [Scheduler(runner, poll_interval=0.25) for runner in self.saga_runners]
        return self

    def _build(self, name: str) -> None:
        """Build one context through its wiring module; a context that cannot be built is recorded in ``missing``."""
        module_name = f"examples.licensing.{name}.infrastructure.wiring"
        try:
            module = importlib.import_module(module_name)
            build = module.build
        except (ImportError, AttributeError) as exc:
            self.missing[name] = f"{module_name}.build is not available ({type(exc).__name__}: {exc})"
            log.warning("context %s is not built: %s", name, self.missing[name])
            return
        parts: ContextParts = build(self.store, self.settings)
        # The application reads every contract and its old versions (it may publish and load any).
        # Consumers keep the registries their context gave them: a consumer knows only what it
        # handles, so a stray type on its topic is dead-lettered as unknown, not acked as "not mine".
        register_contracts(parts.application.registry)
        for consumer in parts.consumers:
            consumer.attach(self.store, self.broker)
        self.contexts[parts.name] = parts

    async def close(self) -> None:
        """Stop whatever still runs, then close the broker and the store."""
        await self.stop()
        if self.broker is not None:
            with contextlib.suppress(Exception):
                await self.broker.close()
        if self.store is not None:
            await self.store.close()

    async def __aenter__(self) -> Platform:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- what the contexts hand in -------------------------------------------------------------

    @property
    def consumers(self) -> list[Consumer]:
        """Every consumer of every built context."""
        return [consumer for parts in self.contexts.values() for consumer in parts.consumers]

    @property
    def saga_runners(self) -> list[SagaRunner]:
        """The saga runners of the contexts that have sagas."""
        return [parts.saga_runner for parts in self.contexts.values() if parts.saga_runner is not None]

    @property
    def projections(self) -> dict[str, Projection]:
        """Every projection by name."""
        return dict(self.projector.projections) if self.projector else {}

    def extra(self, name: str) -> dict[str, Any]:
        """The extras (read-model queries and the like) of one context, or an empty dict if it was not built."""
        parts = self.contexts.get(name)
        return parts.extras if parts is not None else {}

    # -- running -------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether start() was called and stop() was not."""
        return self._running is not None

    async def start(self, roles: Iterable[str] = ("relay", "consumers", "projector", "scheduler")) -> None:
        """Start the roles as tasks of this event loop; returns once consumers are subscribed."""
        chosen = _check_roles(roles)
        if self._running is not None:
            raise RuntimeError("the platform is already running; stop() it first")
        if self.store is None:
            await self.open()
        running = self._running = _Running(asyncio.Event())
        stop = running.stop
        if chosen & {"projector", "api"} and self.projector is not None:
            # The API reads the projections' tables: without them its read routes would fail
            # in a process that runs the API alone.
            await self.projector.prepare()
        if "projector" in chosen and self.projector is not None:
            running.tasks["projector"] = asyncio.create_task(self.projector.run(stop), name="projector")
        if "consumers" in chosen:
            for consumer in self.consumers:
                running.tasks[f"consumer {consumer.name}"] = asyncio.create_task(consumer.run(stop), name=consumer.name)
        if "scheduler" in chosen:
            for n, scheduler in enumerate(self.schedulers):
                running.tasks[f"scheduler {n}"] = asyncio.create_task(scheduler.run(stop), name=f"scheduler {n}")
        if "relay" in chosen and self.relay is not None:
            running.tasks["relay"] = asyncio.create_task(self.relay.run(stop), name="relay")
        if "api" in chosen:
            running.tasks["api"] = asyncio.create_task(self._serve_api(stop), name="api")
        if "consumers" in chosen:
            await self._subscribed(timeout=30.0)

    async def _subscribed(self, timeout: float) -> None:
        """Wait until every consumer reads its topics, so nothing published from now on passes unseen."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not all(consumer.subscribed for consumer in self.consumers):
            self.check()
            if asyncio.get_running_loop().time() > deadline:
                waiting = [c.name for c in self.consumers if not c.subscribed]
                raise TimeoutError(f"consumers not subscribed after {timeout} s: {', '.join(waiting)}")
            await asyncio.sleep(0.05)

    def check(self) -> None:
        """Raise the error of a role that crashed (a role that ends before stop() is a failure too)."""
        if self._running is None:
            return
        for name, task in self._running.tasks.items():
            if task.done() and not self._running.stop.is_set():
                error = task.exception() if not task.cancelled() else None
                raise RuntimeError(f"platform role {name} ended unexpectedly: {error!r}") from error

    async def stop(self, timeout: float = 10.0) -> None:
        """Ask every role to stop and wait for them (cancelling what does not stop within ``timeout`` s)."""
        running, self._running = self._running, None
        if running is None:
            return
        running.stop.set()
        tasks = list(running.tasks.values())
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=timeout)
        for task in late:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for name, result in zip(running.tasks, results, strict=True):
            if isinstance(result, Exception):
                log.error("platform role %s ended with %s: %s", name, type(result).__name__, result)

    async def run(self, roles: Iterable[str] = ROLES, stop: asyncio.Event | None = None) -> None:
        """Run the roles until ``stop`` is set (or a role crashes), then stop them all."""
        stop = stop or asyncio.Event()
        await self.start(roles)
        try:
            while not stop.is_set():
                self.check()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
        finally:
            await self.stop()

    async def _serve_api(self, stop: asyncio.Event) -> None:
        import uvicorn

        from examples.licensing.api import create_app

        config = uvicorn.Config(create_app(self), host=self.api_host, port=self.api_port, log_level="info", lifespan="off")
        server = uvicorn.Server(config)
        # uvicorn installs its own signal handlers in serve(); the process's runner owns signals.
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        serving = asyncio.create_task(server.serve())
        await stop.wait()
        server.should_exit = True
        await serving

    # -- settling (for the scenario and tests) -------------------------------------------------

    async def settle(self, condition: Any = None, *, timeout: float = 20.0, interval: float = 0.05) -> bool:
        """Wait until ``await condition()`` is true (or, without one, until nothing is left to do); False on timeout."""
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            self.check()
            if condition is not None:
                if await condition():
                    return True
            elif await self.idle():
                return True
            await asyncio.sleep(interval)
        return False

    async def idle(self) -> bool:
        """Whether the outbox has nothing ready, no consumer holds a message, and every projection caught up."""
        rows = await self.store.fetch(
            "SELECT count(*) FROM tidings_outbox WHERE delivered_at IS NULL AND parked_at IS NULL", ()
        )
        if rows and int(rows[0][0]) > 0:
            return False
        if any(consumer.in_flight for consumer in self.consumers):
            return False
        if self.projector is not None:
            for status in await self.projector.status():
                if status.lag_events > 0:
                    return False
        return True


def _check_roles(roles: Iterable[str]) -> set[str]:
    chosen = {role.strip() for role in roles if role.strip()}
    unknown = chosen - set(ROLES)
    if unknown:
        raise ValueError(f"unknown role(s) {', '.join(sorted(unknown))}; choose from {', '.join(ROLES)}")
    return chosen


async def context_parts(contexts: Sequence[str] = CONTEXTS) -> list[ContextParts]:
    """Every context as it is wired, on a throwaway in-memory store: for ``tidings contracts --app`` to read.

    The parts are for reading what each context sends and receives; the store is closed when this returns.
    """
    store = await open_store("sqlite:///:memory:", migrate=False)
    try:
        parts = []
        for name in contexts:
            built: ContextParts = importlib.import_module(f"examples.licensing.{name}.infrastructure.wiring").build(store, Settings())
            register_contracts(built.application.registry)
            parts.append(built)
        return parts
    finally:
        await store.close()
