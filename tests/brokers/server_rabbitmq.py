"""RabbitMQ under the conformance suite: a private node of the installed server, restarted for real.

The suite restarts the server, so it does not use the shared system service on 5672 (restarting it
would disturb everything else on the machine). Instead the first test starts a private node from the
installed ``rabbitmq-server`` script — own node name, free AMQP and distribution ports, data and log
directories in a temporary directory — and every test of the session shares it (a node takes ~5 s
to boot). ``restart()`` stops that node gracefully (SIGTERM, what ``systemctl restart`` does; ~1 s)
and starts it again on the same data directory (~5 s); quorum queues and confirmed persistent
messages survive. ``restart(kill=True)`` SIGKILLs it instead; on RabbitMQ 3.10 a single node killed
within about a second of declaring a quorum queue brings that queue back leaderless (it never answers
again), so a kill waits ``QUORUM_SETTLE`` seconds first. Each test's handle uses an exchange of its
own and deletes it and its groups' queues on close; the node and its directory go at exit.
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aio_pika

from support import unavailable

from tidings.brokers.rabbitmq import RabbitMQBroker

#: Quorum queues and publisher confirms: a confirmed message is in the queue's fsynced log (see the module note).
SURVIVES_KILL = True

#: Bounds on the node's life cycle; a fresh node boots in ~5 s, a restart takes ~6 s on this machine.
BOOT_TIMEOUT = 30.0
#: Seconds a quorum queue needs after its declaration before a SIGKILL of its single node is survivable.
QUORUM_SETTLE = 3.0
STOP_TIMEOUT = 15.0


def _server_script() -> str | None:
    """The real ``rabbitmq-server`` script (not Debian's /usr/sbin wrapper, which su's to the rabbitmq user)."""
    if explicit := os.environ.get("TIDINGS_TEST_RABBITMQ_SERVER"):
        return explicit
    packaged = sorted(glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/rabbitmq-server"))
    if packaged:
        return packaged[-1]
    found = shutil.which("rabbitmq-server")
    return os.path.realpath(found) if found else None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the test process dies without running its atexit hooks."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])



class PrivateNode:
    """One RabbitMQ node of our own: its process, ports and directories."""

    def __init__(self, script: str) -> None:
        self.script = script
        self.base = Path(tempfile.mkdtemp(prefix="tidings-rabbitmq-"))
        self.port = _free_port()
        self.dist_port = _free_port()
        self.nodename = f"tidings-test-{uuid.uuid4().hex[:8]}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self.process: subprocess.Popen[bytes] | None = None
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\nlog.file.level = warning\nlog.console = false\n"
        )
        (self.base / "rabbitmq-env.conf").write_text("")  # instead of /etc/rabbitmq/rabbitmq-env.conf (NODENAME…)
        (self.base / "enabled_plugins").write_text("[].\n")
        cookie = self.base / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex.upper())
        cookie.chmod(0o400)
        self.env = os.environ | {
            "HOME": str(self.base),  # Erlang reads the cookie from $HOME
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_PID_FILE": str(self.base / "node.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def launch(self) -> None:
        """Start the node's process (not waiting for it to accept connections); call it from the main thread.

        (The parent-death signal is tied to the thread that forks, so launching from a worker thread
        would stop the node when that thread ends.)
        """
        with open(self.base / "stdout.log", "ab") as out:
            # A session of its own, so stop() can signal the wrapper shell and the VM together.
            self.process = subprocess.Popen(
                [self.script], env=self.env, cwd=self.base, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True, preexec_fn=_die_with_parent,
            )

    async def ready(self) -> float:
        """Wait until the node completes an AMQP handshake; seconds waited; fails with the log's tail if it never does."""
        started = time.monotonic()
        while time.monotonic() - started < BOOT_TIMEOUT:
            if self.process is not None and self.process.poll() is not None:
                break
            try:
                # A bare TCP probe first: aiormq logs every refused AMQP attempt as an error.
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 2)
                writer.close()
                connection = await aio_pika.connect(self.url, timeout=2)
            except Exception:
                await asyncio.sleep(0.2)
                continue
            await connection.close()
            return time.monotonic() - started
        code = self.process.poll() if self.process is not None else None
        what = f"exited with code {code}" if code is not None else f"did not accept connections within {BOOT_TIMEOUT} s"
        raise RuntimeError(f"RabbitMQ node {self.nodename} {what}:\n{self.log_tail()}")

    def log_tail(self) -> str:
        text = ""
        for path in [self.base / "stdout.log", *sorted((self.base / "log").glob("*.log"))]:
            if path.exists():
                text += f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:]) + "\n"
        return text

    def stop(self, kill: bool = False) -> None:
        """Stop gracefully (SIGTERM: the script asks the VM to shut down), killing it if that takes too long; ``kill``: SIGKILL."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        if kill:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        try:  # the wrapper shell is gone; make sure the VM (same process group) is too
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


_node: PrivateNode | None = None
_failure: str | None = None  # why the node could not start; the session's other tests fail fast with it


async def _shared_node() -> PrivateNode:
    """The session's private node, started on first use and destroyed when the interpreter exits."""
    global _node, _failure
    if _failure is not None:
        unavailable(_failure)
    if _node is None:
        script = _server_script()
        if script is None or not os.access(script, os.X_OK):
            _failure = "rabbitmq-server is not installed (set TIDINGS_TEST_RABBITMQ_SERVER to its sbin script)"
            unavailable(_failure)
        assert script is not None
        node = PrivateNode(script)
        atexit.register(node.destroy)
        node.launch()
        try:
            await node.ready()
        except RuntimeError as exc:
            node.destroy()
            _failure = str(exc)
            unavailable(_failure)
        _node = node
    return _node


class RabbitMQServer:
    """A test's handle on the private node: makes clients, restarts the node, removes what it created."""

    name = "rabbitmq"

    def __init__(self, node: PrivateNode) -> None:
        self.node = node
        self.exchange = f"tidings-test-{uuid.uuid4().hex[:10]}"
        self._brokers: list[RabbitMQBroker] = []
        self.last_restart_seconds: float | None = None

    async def broker(self) -> RabbitMQBroker:
        # A small limit keeps the oversized-message test cheap; the default is 16 MiB.
        broker = RabbitMQBroker(self.node.url, exchange=self.exchange, max_message_bytes=256 * 1024, reconnect_interval=0.5)
        self._brokers.append(broker)
        await broker.connect()
        return broker

    async def restart(self, kill: bool = False) -> None:
        if kill:
            # A single node SIGKILLed in the first seconds after a quorum queue was declared brings the
            # queue back leaderless (RabbitMQ 3.10): give the test's just-declared group time to settle.
            await asyncio.sleep(QUORUM_SETTLE)
        started = time.monotonic()
        await asyncio.to_thread(self.node.stop, kill)
        self.node.launch()
        await self.node.ready()
        self.last_restart_seconds = time.monotonic() - started

    async def close(self) -> None:
        queues: set[str] = set()
        for broker in self._brokers:
            queues |= broker.declared_queues
            await broker.close()
        self._brokers.clear()
        connection = await aio_pika.connect(self.node.url, timeout=5)
        try:
            channel = await connection.channel()
            for queue in sorted(queues | {f"{self.exchange}.unrouted"}):
                await channel.queue_delete(queue)
            await channel.exchange_delete(self.exchange)
            await channel.exchange_delete(f"{self.exchange}.unrouted")
        finally:
            await connection.close()


async def start(tmp_path: Path) -> RabbitMQServer:
    """A handle on the session's private RabbitMQ node (started on first use)."""
    return RabbitMQServer(await _shared_node())
