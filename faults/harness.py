"""One run of a scenario: servers, a fresh schema, writer, relay and consumer processes, the plan's faults, drain, figures.

The harness only ever signals processes it started (by pid) and only restarts servers it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tidings.brokers import open_broker
from tidings.store import Store, open_store

from faults import poison
from faults.invariants import Figures, compute, read_deliveries, read_intents
from faults.model import EFFECTS_DDL
from faults.plan import Fault, Plan
from faults.servers import BrokerServer, PostgresCluster, broker_server

REPO = Path(__file__).resolve().parent.parent
SHARED_POSTGRES = os.environ.get("TIDINGS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def say(message: str) -> None:
    """Progress goes to stderr; stdout is kept for the one JSON line."""
    print(f"[faults {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(eq=False)
class Worker:
    """A child process the harness started: its role, index, process and log."""

    role: str
    index: int
    process: subprocess.Popen[bytes]
    log: Path
    killed: bool = False

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class Run:
    """Everything one scenario run owns; ``await run.execute()`` gives the figures."""

    plan: Plan
    broker_name: str = "nats"
    #: Stop the broker with SIGTERM even where the plan says SIGKILL (``--broker-stop term``).
    graceful_only: bool = False
    keep: bool = False
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tidings-faults-")))
    workers: dict[tuple[str, int], Worker] = field(default_factory=dict)
    kills: int = 0
    restarts: int = 0
    #: Faults that really happened (a kill of a worker already down does not count).
    faults_fired: int = 0
    #: Server restarts that were crashes: a broker SIGKILLed, PostgreSQL restarted ``-m immediate``.
    server_kills: int = 0
    died: list[str] = field(default_factory=list)
    refused: int = 0
    poison_injected: int = 0
    poison_ids: set[str] = field(default_factory=set)
    poison_keys: set[str] = field(default_factory=set)
    store: Store | None = None
    broker: BrokerServer | None = None
    cluster: PostgresCluster | None = None
    database_url: str = ""
    schema: str = ""

    # -- set up and tear down ------------------------------------------------------------------

    async def setup(self) -> None:
        self.root.chmod(0o755)  # the private PostgreSQL runs as the postgres user and must reach its directory
        self.broker = broker_server(self.broker_name, self.root)
        say(f"starting a private {self.broker_name} server")
        await self.broker.start()
        if self.plan.scenario == "db-restart":
            self.cluster = PostgresCluster(self.root / "postgres")
            say("starting a private PostgreSQL cluster")
            await self.cluster.start()
            self.database_url = self.cluster.url
            self.store = await open_store(self.database_url, migrate=True)
        else:
            self.schema = f"faults_{self.plan.scenario.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
            self.database_url = f"{SHARED_POSTGRES}?options={quote(f'-c search_path={self.schema}')}"
            self.store = await open_store(SHARED_POSTGRES, migrate=True, schema=self.schema)
        await self.store.run(EFFECTS_DDL)

    async def teardown(self) -> None:
        for worker in self.workers.values():
            if worker.alive:
                worker.process.kill()
                with contextlib.suppress(Exception):
                    worker.process.wait(5)
        if self.store is not None:
            if self.schema and not self.keep:
                with contextlib.suppress(Exception):
                    await self.store.drop_schema()  # type: ignore[attr-defined]
            with contextlib.suppress(Exception):
                await self.store.close()
        if self.broker is not None:
            with contextlib.suppress(Exception):
                await self.broker.stop()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                await self.cluster.stop()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            say(f"kept {self.root} (schema {self.schema or 'public of the private cluster'})")

    # -- processes -----------------------------------------------------------------------------

    def _env(self, **extra: str) -> dict[str, str]:
        assert self.broker is not None
        return {
            **os.environ,
            "TIDINGS_DATABASE_URL": self.database_url,
            "TIDINGS_BROKER_URL": self.broker.url,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), str(REPO / "src"), os.environ.get("PYTHONPATH")])),
            "COLUMNS": "200",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }

    def _spawn(self, role: str, index: int, argv: list[str], **env: str) -> Worker:
        log = self.root / f"{role}-{index}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, *argv], env=self._env(**env), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        worker = Worker(role, index, process, log)
        self.workers[(role, index)] = worker
        return worker

    def intents_path(self, index: int) -> Path:
        return self.root / f"intents-{index}.txt"

    def deliveries_path(self, index: int) -> Path:
        return self.root / f"deliveries-{index}.txt"

    def start(self, role: str, index: int) -> Worker:
        """Start (or start again) worker ``index`` of ``role``."""
        shape = self.plan.shape
        if role == "writer":
            keys = ",".join(f"w{index}-k{k}" for k in range(shape.keys_per_writer))
            return self._spawn(role, index, [
                "-m", "faults.writer", "--keys", keys, "--intents", str(self.intents_path(index)), "--rate", str(shape.rate),
                "--seed", str(self.plan.seed * 100 + index),
            ])  # fmt: skip
        if role == "relay":
            return self._spawn(role, index, ["-m", "tidings.cli", "relay", "--batch-size", "50"])
        if role == "consumer":
            env = {
                "FAULTS_DELIVERIES": str(self.deliveries_path(index)),
                "FAULTS_SHARDS": str(shape.shards),
                "FAULTS_MEMBER": f"consumer-{index}",
            }
            if self.plan.scenario == "crash-consumer":
                env["FAULTS_ACK_DELAY"] = "0.5"
            if self.plan.chaos_seed is not None:
                env["FAULTS_CHAOS_SEED"] = str(self.plan.chaos_seed)
            return self._spawn(role, index, ["-m", "tidings.cli", "consume", "faults.model:build"], **env)
        raise ValueError(role)

    def kill(self, role: str, index: int) -> bool:
        """SIGKILL one of our workers, by its pid; False if it is already down (waiting to be started again)."""
        worker = self.workers[(role, index)]
        if not worker.alive:
            return False
        worker.killed = True
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.wait(5)
        self.kills += 1
        return True

    def check_workers(self) -> None:
        """Note (and start again) any worker that exited without being killed: a worker must not die of a fault."""
        for (role, index), worker in list(self.workers.items()):
            if not worker.alive and not worker.killed:
                tail = worker.log.read_text(errors="replace")[-1500:]
                self.died.append(f"{role}-{index} exited with {worker.process.returncode}")
                say(f"{role}-{index} DIED (exit {worker.process.returncode}); log tail:\n{tail}")
                self.start(role, index)

    async def stop_role(self, role: str) -> None:
        """SIGTERM every live worker of ``role`` and wait for them (SIGKILL after 20 s)."""
        mine = [w for w in self.workers.values() if w.role == role and w.alive]
        for worker in mine:
            worker.killed = True  # an orderly stop, not a death
            worker.process.terminate()
        for worker in mine:
            try:
                await asyncio.to_thread(worker.process.wait, 20)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                say(f"{role}-{worker.index} did not stop within 20 s of SIGTERM; killed")

    async def wait_for_logs(self, role: str, words: str, timeout: float = 60) -> None:
        """Wait until every process of ``role`` has logged ``words`` (it is up and working)."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_workers()
            logs = [w.log.read_text(errors="replace") for w in self.workers.values() if w.role == role]
            if logs and all(words in text for text in logs):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{role} processes did not log {words!r} within {timeout} s:\n{logs[0][-2000:] if logs else ''}")
            await asyncio.sleep(0.2)

    # -- the run -------------------------------------------------------------------------------

    async def execute(self) -> dict[str, Any]:
        started = time.monotonic()
        plan, shape = self.plan, self.plan.shape
        try:
            await self.setup()
            say(f"{plan.scenario}, seed {plan.seed}: {shape.writers} writer(s) at {shape.rate:g}/s for {shape.duration:g} s, "
                f"{shape.relays} relay(s), {shape.consumers} consumer(s); {len(plan.faults)} fault(s) planned")  # fmt: skip
            for index in range(shape.consumers):
                self.start("consumer", index)
            # RabbitMQ keeps only what arrives after a group's queue exists: consumers subscribe first.
            await self.wait_for_logs("consumer", "subscribed to")
            for index in range(shape.relays):
                self.start("relay", index)
            for index in range(shape.writers):
                self.start("writer", index)
            # The plan's clock starts when everything runs: a fault must hit a busy system, not a booting one.
            await self.wait_for_logs("relay", "owns")
            await self.wait_for_logs("writer", "writing to")
            await self._workload()
            await self.stop_role("writer")
            figures = await self._drain_and_check()
        finally:
            await self.teardown()
        result = {
            "scenario": plan.scenario,
            "seed": plan.seed,
            "commands": figures.commands,
            "kills": self.kills,
            "lost": figures.lost,
            "confirmed": figures.confirmed,
            "confirmed_missing": figures.confirmed_missing,
            "faults_fired": self.faults_fired + (figures.redeliveries if plan.chaos_seed is not None else 0),
            "server_kills": self.server_kills,
            "phantom": figures.phantom,
            "duplicate_effects": figures.duplicate_effects,
            "order_violations": figures.order_violations,
            "parked": figures.parked,
            "refused": self.refused,
            "poison_injected": self.poison_injected,
            "duration_s": round(time.monotonic() - started, 1),
            # Beyond the list: what else a reader needs to trust the figures above.
            "broker": self.broker_name,
            "restarts": self.restarts,
            "died": len(self.died),
            "attempted": figures.attempted,
            "unintended": figures.unintended,
            "relay_parked": figures.relay_parked,
            "redeliveries": figures.redeliveries,
        }
        for line in figures.details:
            say(f"finding: {line}")
        for line in self.died:
            say(f"died: {line}")
        return result

    async def _workload(self) -> None:
        """Run the writers for the planned duration, applying each fault at its moment."""
        shape = self.plan.shape
        begin = time.monotonic()
        pending = list(self.plan.faults)
        restarts: list[tuple[float, str, int]] = []
        last_report = begin
        while True:
            now = time.monotonic() - begin
            if now >= shape.duration and not pending and not restarts:
                break
            while pending and pending[0].at <= now:
                fault = pending.pop(0)
                await self._apply(fault, restarts, now)
            for item in [r for r in restarts if r[0] <= now]:
                restarts.remove(item)
                _, role, index = item
                self.start(role, index)
            self.check_workers()
            if time.monotonic() - last_report > 5:
                last_report = time.monotonic()
                say(f"t={now:.0f}s kills={self.kills} restarts={self.restarts} poison={self.poison_injected}")
            await asyncio.sleep(0.05)

    async def _apply(self, fault: Fault, restarts: list[tuple[float, str, int]], now: float) -> None:
        assert self.broker is not None and self.store is not None
        if fault.action.startswith("kill-"):
            role = fault.action.removeprefix("kill-")
            pid = self.workers[(role, fault.target)].process.pid
            if self.kill(role, fault.target):
                self.faults_fired += 1
                say(f"t={now:.1f}s kill -9 {role}-{fault.target} (pid {pid}); started again in {fault.pause:g} s")
                restarts.append((now + fault.pause, role, fault.target))
            else:
                say(f"t={now:.1f}s {role}-{fault.target} is still down from the last kill; nothing to kill")
        elif fault.action == "restart-broker":
            kill = fault.detail == "kill" and self.broker.survives_kill and not self.graceful_only
            if fault.detail == "kill" and not kill:
                say(f"t={now:.1f}s the {self.broker_name} server keeps what it confirmed only across a graceful stop: SIGTERM, not SIGKILL")
            say(f"t={now:.1f}s {'killing (SIGKILL)' if kill else 'stopping (SIGTERM)'} the {self.broker_name} server for {fault.pause:g} s")
            await self.broker.stop(kill=kill)
            await asyncio.sleep(fault.pause)
            await self.broker.start()
            self.restarts += 1
            self.server_kills += kill
            self.faults_fired += 1
            say(f"{self.broker_name} is back")
        elif fault.action == "restart-database":
            assert self.cluster is not None
            say(f"t={now:.1f}s pg_ctl restart -m {fault.detail}")
            await self.cluster.restart(fault.detail)
            self.restarts += 1
            self.faults_fired += 1
            self.server_kills += fault.detail == "immediate"
            say("PostgreSQL is back")
        elif fault.action == "poison-broker":
            async with poison.publisher(self.broker.url) as publisher:
                event_id, key = await poison.at_broker(publisher, fault.detail)
            self.poison_ids.add(event_id)
            self.poison_keys.add(key)
            self.poison_injected += 1
            self.faults_fired += 1
        elif fault.action == "poison-api":
            self.poison_injected += 1
            self.faults_fired += 1
            refusal = await poison.through_api(self.store, fault.detail)
            if refusal is not None:
                self.refused += 1
                say(f"refused {fault.detail}: {refusal[:160]}")
            else:
                say(f"NOT refused: {fault.detail}")

    async def _drain_and_check(self) -> Figures:
        """Wait until every committed tick is applied (or parked), then give late redeliveries a moment, then count."""
        assert self.store is not None
        store = self.store
        timeout = 600.0 if self.plan.shape.duration > 60 else 120.0
        deadline = time.monotonic() + timeout
        expected_parked = len(self.poison_ids)
        say("draining")
        last_report = 0.0
        while True:
            self.check_workers()
            try:
                outbox = int((await store.fetch("SELECT count(*) FROM tidings_outbox WHERE delivered_at IS NULL AND parked_at IS NULL"))[0][0])
                total = int((await store.fetch("SELECT count(*) FROM tidings_outbox"))[0][0])
                applied = int((await store.fetch("SELECT count(DISTINCT event_id) FROM faults_effects"))[0][0])
                parked = int((await store.fetch("SELECT count(*) FROM tidings_dead_letters WHERE status = 'dead'"))[0][0])
            except Exception as exc:  # the database may still be recovering
                say(f"drain: {type(exc).__name__}: {exc}")
                await asyncio.sleep(0.5)
                continue
            if outbox == 0 and applied >= total and parked >= expected_parked:
                break
            if time.monotonic() > deadline:
                say(f"drain timed out after {timeout:g} s: {outbox} unpublished, {applied}/{total} applied, {parked} parked")
                break
            if time.monotonic() - last_report > 5:
                last_report = time.monotonic()
                say(f"drain: {outbox} unpublished, {applied}/{total} applied, {parked}/{expected_parked} parked")
            await asyncio.sleep(0.2)
        # Redeliveries of what a killed consumer held come back after the broker's ack wait; let
        # them arrive (and be skipped, or not) before counting.
        await asyncio.sleep(2.5)
        self.check_workers()
        await self.stop_role("relay")
        await self.stop_role("consumer")
        intents = read_intents([self.intents_path(i) for i in range(self.plan.shape.writers)])
        deliveries = read_deliveries([self.deliveries_path(i) for i in range(self.plan.shape.consumers)])
        return await compute(store, intents, deliveries, self.poison_ids, self.poison_keys)
