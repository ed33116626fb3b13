"""Private servers the harness starts, restarts and stops: PostgreSQL, NATS, Redis, RabbitMQ and a Kafka-compatible one.

Nothing shared on this machine is ever restarted: each server here runs from the installed
binaries on a free port with its data in the run's own directory, and goes when the run ends.
"""

from __future__ import annotations

import asyncio
import glob
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Protocol

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_for_port(port: int, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something accepts TCP connections on ``port`` (RuntimeError after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server on port {port} exited with {process.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing listened on port {port} within {timeout} s")


class BrokerServer(Protocol):
    """A private broker server: its URL for tidings, and a real stop and start."""

    name: str
    url: str
    #: Whether what the server confirmed survives a kill -9 of its process (so the plan may kill it).
    survives_kill: bool

    async def start(self) -> None: ...

    async def stop(self, kill: bool = False) -> None: ...

    async def restart(self) -> None: ...


class _ProcessServer:
    """A server that is one child process; stop is SIGTERM (the server flushes), then SIGKILL if it hangs."""

    name = ""
    url = ""
    survives_kill = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / "server.log").open("ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        await wait_for_port(self.port, 20, self.process)
        await self.ready()

    async def ready(self) -> None:
        """Wait until the server answers requests, not only connections."""

    async def stop(self, kill: bool = False) -> None:
        """SIGTERM (the server flushes and exits), or with ``kill`` a SIGKILL: no flush, no goodbye."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        if kill:
            process.kill()
            await asyncio.to_thread(process.wait, 5)
            return
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 15)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait, 5)

    async def restart(self) -> None:
        await self.stop()
        await self.start()


class NatsServer(_ProcessServer):
    """nats-server with JetStream and a file store in the run's directory.

    JetStream confirms a publish once the message is written to its store file, which the kernel
    keeps across a kill -9 of the process (only a machine crash needs fsync): a SIGKILL must lose
    nothing it confirmed.
    """

    name = "nats"

    def __init__(self, root: Path, ack_wait: float = 2.0) -> None:
        super().__init__(root)
        # A short ack_wait brings a killed consumer's held messages back quickly.
        self.url = f"nats://127.0.0.1:{self.port}?ack_wait={ack_wait}"

    def command(self) -> list[str]:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        return [binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.root / "jetstream")]

    async def ready(self) -> None:
        import nats

        async def quiet(exc: Exception) -> None:
            """nats-py would log every refused attempt."""

        deadline = time.monotonic() + 20
        while True:
            try:
                nc = await nats.connect(f"nats://127.0.0.1:{self.port}", allow_reconnect=False, connect_timeout=1, error_cb=quiet)
                try:
                    await nc.jetstream().account_info()
                    return
                finally:
                    await nc.close()
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)


class RedisServer(_ProcessServer):
    """redis-server with an fsynced append-only file (``appendfsync always``), so what it confirmed survives a kill -9."""

    name = "redis"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.root), "--appendonly", "yes", "--appendfsync", "always", "--save", "",
        ]  # fmt: skip

    async def ready(self) -> None:
        deadline = time.monotonic() + 20
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(b"PING\r\n")
                await writer.drain()
                reply = await asyncio.wait_for(reader.readline(), 1)
                writer.close()
                if reply.startswith(b"+PONG"):
                    return
            except (OSError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} never answered PING")
            await asyncio.sleep(0.1)


class RabbitMQServer(_ProcessServer):
    """A RabbitMQ node of our own (own node name, ports, data directory), stopped by SIGTERM or killed by SIGKILL.

    tidings' groups are quorum queues and the relay publishes with confirms, which a quorum queue
    sends only once the message is in its (fsynced) log: a SIGKILL of the node must lose nothing confirmed.
    """

    name = "rabbitmq"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.dist_port = free_port()
        self.nodename = f"tidings-faults-{uuid.uuid4().hex[:8]}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _script(self) -> str:
        packaged = sorted(glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/rabbitmq-server"))
        if not packaged:
            raise RuntimeError("rabbitmq-server is not installed")
        return packaged[-1]

    async def start(self) -> None:
        base = self.root
        base.mkdir(parents=True, exist_ok=True)
        (base / "rabbitmq.conf").write_text(f"listeners.tcp.1 = 127.0.0.1:{self.port}\nlog.file.level = warning\nlog.console = false\n")
        (base / "rabbitmq-env.conf").write_text("")
        (base / "enabled_plugins").write_text("[].\n")
        cookie = base / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(uuid.uuid4().hex.upper())
            cookie.chmod(0o400)
        env = os.environ | {
            "HOME": str(base),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "node.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        with (base / "server.log").open("ab") as log:
            # A session of its own, so stop() signals the wrapper shell and the Erlang VM together.
            self.process = subprocess.Popen(
                [self._script()], env=env, cwd=base, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        await wait_for_port(self.port, 60, self.process)
        import aio_pika

        deadline = time.monotonic() + 60
        while True:
            try:
                connection = await aio_pika.connect(self.url, timeout=2)
                await connection.close()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def stop(self, kill: bool = False) -> None:
        """SIGTERM to the node's process group (a graceful stop), or with ``kill`` SIGKILL to all of it."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        if kill:
            os.killpg(process.pid, signal.SIGKILL)
            await asyncio.to_thread(process.wait, 5)
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            await asyncio.to_thread(process.wait, 5)
        try:  # the wrapper shell is gone; make sure the VM of the same group is too
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class KafkaServer(_ProcessServer):
    """A private noida-db serving the Kafka wire protocol (Kafka-compatible, not Apache Kafka: one node, its own storage).

    It survives only a graceful stop: it writes its state about a second after a change and on
    SIGTERM, not before it confirms a produce, so a kill -9 loses the last second of confirmed
    messages. The harness therefore never SIGKILLs it (``survives_kill`` is False).
    """

    name = "kafka"
    survives_kill = False

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.url = f"kafka://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        spec = importlib.util.find_spec("noida_db")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("the Kafka-compatible test broker is not installed: pip install -e '.[dev]' (noida-db)")
        binary = Path(next(iter(spec.submodule_search_locations))) / "noida-db"
        if not os.access(binary, os.X_OK):
            binary.chmod(0o755)  # what the package's own wrapper does before running it
        return [str(binary), "start", "--only", "kafka", "--kafka-port", str(self.port), "--host", "127.0.0.1",
                "--data-dir", str(self.root / "data")]  # fmt: skip


class LocalServer:
    """The local broker: the store's own durable log, so there is no server to stop; a restart is a no-op."""

    name = "local"
    url = "local:"
    survives_kill = True

    async def start(self) -> None:
        """Nothing to start: the log lives in the database."""

    async def stop(self, kill: bool = False) -> None:
        """Nothing to stop."""

    async def restart(self) -> None:
        """Nothing to restart."""


def broker_server(name: str, root: Path) -> BrokerServer:
    """A private server of broker ``name`` (nats, redis, rabbitmq, kafka or local) under ``root``."""
    if name == "local":
        return LocalServer()
    servers: dict[str, type[_ProcessServer]] = {"nats": NatsServer, "redis": RedisServer, "rabbitmq": RabbitMQServer, "kafka": KafkaServer}
    if name not in servers:
        raise ValueError(f"unknown broker {name!r}; choose one of {', '.join(servers)}")
    return servers[name](root / name)


class PostgresCluster:
    """A private PostgreSQL 15 cluster (initdb in the run's directory), the only one the harness restarts.

    initdb and pg_ctl refuse to run as root, so they run as the postgres user when we are root.
    """

    def __init__(self, root: Path, settings: dict[str, str] | None = None) -> None:
        self.root = root
        #: Server settings beyond the defaults (``{"wal_level": "logical"}`` for change data capture).
        self.settings = settings or {}
        self.data = root / "pgdata"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        command = [str(PG_BIN / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=check, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)

    async def start(self) -> None:
        if not self.data.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                shutil.chown(self.root, "postgres", "postgres")
            await asyncio.to_thread(self._run, "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        await asyncio.to_thread(self._pg_ctl, "start")

    def _pg_ctl(self, action: str, mode: str | None = None) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
        options += "".join(f" -c {name}={value}" for name, value in self.settings.items())
        args = ["pg_ctl", "-D", str(self.data), "-l", str(self.root / "postgres.log"), "-w", "-t", "60", action]
        if action in ("start", "restart"):
            args += ["-o", options]
        if mode:
            args += ["-m", mode]
        result = self._run(*args, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl {action} failed: {result.stdout.decode(errors='replace')[-1500:]}")

    async def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart -m fast`` (sessions ended cleanly) or ``-m immediate`` (a crash, then recovery)."""
        await asyncio.to_thread(self._pg_ctl, "restart", mode)

    async def stop(self) -> None:
        if self.data.exists():
            await asyncio.to_thread(self._pg_ctl, "stop", "fast")

    def destroy(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
