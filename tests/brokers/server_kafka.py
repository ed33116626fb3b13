"""The Kafka broker under the conformance suite, against a private noida-db server: Kafka-compatible, not Apache Kafka.

noida-db (PyPI ``noida-db``, a single binary) speaks the Kafka wire protocol — produce with
idempotence, consumer groups, offset commits, topic creation — and keeps its state in a data
directory, so a restart can be checked for lost messages. It is not Apache Kafka: one broker, no
replication, and its own storage (see ``restart``). Passing here means the adapter speaks the
protocol correctly to a compatible broker; behaviour under a real multi-broker cluster (leader
moves, ISR shrinking, KRaft) is not exercised.

Each test gets its own server on a free port with its data under ``tmp_path``; starting one takes
well under a second, so no session scope is needed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import socket
import subprocess
from pathlib import Path


from support import unavailable

from tidings.brokers.kafka import KafkaBroker, from_url

START_TIMEOUT = 20.0
#: noida-db persists about a second after confirming, so a kill -9 loses confirmed messages (see ``restart``).
SURVIVES_KILL = False
STOP_TIMEOUT = 10.0


def _binary() -> Path:
    """The noida-db executable shipped inside the ``noida_db`` package (its console script wraps it)."""
    spec = importlib.util.find_spec("noida_db")
    if spec is None or not spec.submodule_search_locations:
        reason = "the Kafka-compatible test broker is not installed: pip install -e '.[dev]' (noida-db)"
        unavailable(reason)
    binary = Path(next(iter(spec.submodule_search_locations))) / "noida-db"
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)  # what the package's own wrapper does before running it
    return binary


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NoidaKafkaServer:
    """One private noida-db process serving only Kafka, with its data in a directory of its own."""

    name = "kafka"

    def __init__(self, binary: Path, data_dir: Path) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.log_path = data_dir.parent / "noida-db.log"
        self.port = _free_port()
        self.url = f"kafka://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._brokers: list[KafkaBroker] = []

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [str(self.binary), "start", "--only", "kafka", "--kafka-port", str(self.port), "--host", "127.0.0.1",
                 "--data-dir", str(self.data_dir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, not the server
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while loop.time() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"noida-db exited with {self._process.returncode}: {self._log_tail()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return
        await self._stop()
        raise RuntimeError(f"noida-db did not listen on port {self.port} within {START_TIMEOUT:g} s: {self._log_tail()}")

    async def broker(self) -> KafkaBroker:
        broker = from_url(self.url)
        self._brokers.append(broker)
        await broker.connect()
        return broker

    async def restart(self, kill: bool = False) -> None:
        """Stop the server as an operator would (SIGTERM) and start it on the same port and data.

        SIGTERM, not SIGKILL: noida-db writes its whole state to ``kafka.json`` about a second after
        a change and on shutdown, not before it confirms a produce, so a kill -9 loses the last
        second of confirmed messages — unlike Kafka, whose log is in the page cache at ack time. So
        ``SURVIVES_KILL`` is False here and ``kill`` is refused.
        """
        if kill:
            raise ValueError("noida-db keeps what it confirmed only across a graceful stop; it is never SIGKILLed in tests")
        await self._stop()
        await self.start()

    async def close(self) -> None:
        for broker in self._brokers:
            await broker.close()
        self._brokers.clear()
        await self._stop()

    async def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_TIMEOUT
        while process.poll() is None and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


async def start(tmp_path: Path) -> NoidaKafkaServer:
    """A private noida-db Kafka server on a free port, its data under ``tmp_path``."""
    server = NoidaKafkaServer(_binary(), tmp_path / "noida-kafka")
    await server.start()
    return server
