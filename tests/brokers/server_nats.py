"""NATS JetStream under the conformance suite: a private nats-server per test, restarted for real.

The shared system NATS on 4222 is never touched: each test gets its own ``nats-server -js`` on a
free port with its store under ``tmp_path``, so ``restart()`` can stop and start it (same port,
same store directory) and the suite can check that confirmed messages survive.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING


from support import unavailable

if TYPE_CHECKING:
    from tidings.brokers.nats import NatsBroker

#: Bound on every wait for the server to come up or go down.
STARTUP_TIMEOUT = 15.0
#: JetStream confirms once the message is written to its store file, which the kernel keeps across a kill -9.
SURVIVES_KILL = True
#: Short ack wait: a dead member's messages come back within seconds, so the crash test stays quick.
ACK_WAIT = 3.0



def _binary() -> str:
    """The nats-server executable, or fail (CI) / skip (elsewhere) with the reason."""
    found = shutil.which("nats-server") or ("/usr/sbin/nats-server" if os.access("/usr/sbin/nats-server", os.X_OK) else None)
    if not found:
        unavailable("nats-server is not installed (needed to run a private JetStream server for the NATS broker tests)")
    return str(found)


async def _quiet(exc: Exception) -> None:
    """Connection errors while waiting for the server are expected; nats-py would log each one."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NatsServer:
    """A private nats-server process with JetStream and a file store under the test's tmp_path."""

    name = "nats"

    def __init__(self, binary: str, root: Path) -> None:
        self.binary = binary
        self.store_dir = root / "jetstream"
        self.log_file = root / "nats-server.log"
        self.port = _free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._brokers: list[NatsBroker] = []

    async def start(self) -> None:
        """Start the server and wait until JetStream answers (it may still be recovering its store)."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store_dir)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            await self._wait_until_ready()
        except BaseException:
            await self.stop()
            raise

    async def _wait_until_ready(self) -> None:
        import nats  # the client is only needed once the binary exists

        deadline = asyncio.get_running_loop().time() + STARTUP_TIMEOUT
        last_error: BaseException | None = None
        while asyncio.get_running_loop().time() < deadline:
            if self._process is not None and self._process.poll() is not None:
                break
            try:
                # Probe the port first: nats-py waits its reconnect interval after a refused connect.
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                await writer.wait_closed()
                nc = await nats.connect(self.url, connect_timeout=1, allow_reconnect=False, error_cb=_quiet)
            except Exception as exc:  # not listening yet
                last_error = exc
                await asyncio.sleep(0.05)
                continue
            try:
                await nc.jetstream().account_info()
                return
            except Exception as exc:  # JetStream still starting or recovering
                last_error = exc
                await asyncio.sleep(0.05)
            finally:
                await nc.close()
        log_tail = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
        raise RuntimeError(f"nats-server on port {self.port} did not become ready ({last_error!r}); log:\n{log_tail}")

    async def stop(self, kill: bool = False) -> None:
        """Terminate the server (SIGTERM lets JetStream flush its store), killing it if it hangs; ``kill``: SIGKILL at once."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        if kill:
            process.kill()
            await asyncio.to_thread(process.wait, STARTUP_TIMEOUT)
            return
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, STARTUP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait, STARTUP_TIMEOUT)

    async def broker(self) -> NatsBroker:
        """A new connected client with a short ack wait (each a separate connection, like a process)."""
        from tidings.brokers.nats import from_url

        broker = from_url(f"{self.url}?ack_wait={ACK_WAIT}")
        await broker.connect()
        self._brokers.append(broker)
        return broker

    async def restart(self, kill: bool = False) -> None:
        """Stop (or SIGKILL) the process and start a new one on the same port and store directory."""
        await self.stop(kill)
        await self.start()

    async def close(self) -> None:
        """Close every client this handle made, then stop the server (its store goes with tmp_path)."""
        for broker in self._brokers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(broker.close(), 10)
        self._brokers.clear()
        await self.stop()


async def start(tmp_path: Path) -> NatsServer:
    """A fresh private JetStream server for one test."""
    try:
        import nats  # noqa: F401  (the client the broker needs: the 'nats' extra)
    except ImportError as exc:
        unavailable(f"nats-py is not installed ({exc}); pip install 'tidings[nats]'")
    server = NatsServer(_binary(), tmp_path)
    await server.start()
    return server
