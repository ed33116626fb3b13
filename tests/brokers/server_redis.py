"""Redis under the conformance suite: a private redis-server per test, with an fsynced append-only file.

The machine's own Redis runs without persistence, so restarting it would lose everything (and
disturb whoever else uses it). Each test gets its own server on a free port instead, with
``appendonly yes`` and ``appendfsync always`` in the test's directory: what it confirmed is on disk,
and restart() really stops the process and starts it again on the same files.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path


from support import unavailable

from tidings.brokers.redis import RedisBroker

#: The private server runs with appendfsync always: what it confirmed is on disk before the reply.
SURVIVES_KILL = True



def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A redis-server process of this test's own."""

    name = "redis"

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: asyncio.subprocess.Process | None = None
        self._brokers: list[RedisBroker] = []

    async def start(self) -> None:
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - handed to the child process
        self._process = await asyncio.create_subprocess_exec(
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            stdout=log,
            stderr=log,
        )  # fmt: skip
        log.close()
        for _ in range(100):  # up to 10 s: replaying the append-only file takes a moment
            if self._process.returncode is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}; see {self.directory / 'redis.log'}")
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(b"PING\r\n")
                await writer.drain()
                reply = await asyncio.wait_for(reader.readline(), 1)
                writer.close()
                if reply.startswith(b"+PONG"):
                    return
            except OSError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError(f"redis-server on port {self.port} did not answer within 10 s")

    async def stop(self, kill: bool = False) -> None:
        if self._process is None or self._process.returncode is not None:
            return
        if kill:  # no flush: what survives is what appendfsync always put on disk before confirming
            self._process.kill()
            await self._process.wait()
            return
        # SIGTERM makes Redis fsync the append-only file and exit; kill it if it takes too long.
        self._process.terminate()
        try:
            await asyncio.wait_for(self._process.wait(), 10)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()

    async def broker(self) -> RedisBroker:
        # partitions stays at the default (32): the suite's 4 partitions are a subset of it.
        broker = RedisBroker(self.url)
        await broker.connect()
        self._brokers.append(broker)
        return broker

    async def restart(self, kill: bool = False) -> None:
        await self.stop(kill)
        await self.start()

    async def close(self) -> None:
        for broker in self._brokers:
            await broker.close()
        self._brokers.clear()
        await self.stop()


async def start(tmp_path: Path) -> RedisServer:
    """A fresh private Redis with durable storage under ``tmp_path``."""
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "redis-server is not installed (apt-get install redis-server)"
        unavailable(reason)
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(binary, directory)
    await server.start()
    return server
