"""The local broker under the conformance suite: a SQLite file; a restart reopens it, as a new process would."""

from __future__ import annotations

from pathlib import Path

from tidings.brokers.local import LocalBroker
from tidings.store import Store, open_store


#: The log is the database file: what a commit confirmed is on disk before the commit returns.
SURVIVES_KILL = True


class LocalServer:
    """The local broker's 'server' is the store file itself."""

    name = "local"

    def __init__(self, path: Path) -> None:
        self.url = f"sqlite:///{path}"
        self._stores: list[Store] = []

    async def broker(self) -> LocalBroker:
        store = await open_store(self.url)
        self._stores.append(store)
        broker = LocalBroker(store, max_message_bytes=64 * 1024, poll_interval=0.05)
        await broker.connect()
        return broker

    async def restart(self, kill: bool = False) -> None:
        # A "kill" of the local broker is its clients dropping their connections without a goodbye,
        # which closing them is, as far as the SQLite file can tell: its commits are already on disk.
        for store in self._stores:
            await store.close()
        self._stores.clear()

    async def close(self) -> None:
        await self.restart()


async def start(tmp_path: Path) -> LocalServer:
    """A local broker on a fresh SQLite file."""
    return LocalServer(tmp_path / "local-broker.db")
