"""The handle a broker's test module gives the conformance suite."""

from __future__ import annotations

from typing import Protocol

from tidings.brokers.base import Broker


class BrokerServer(Protocol):
    """A broker server the suite can talk to and restart."""

    name: str

    async def broker(self) -> Broker:
        """A new, connected client of this server (each call a separate connection, like a separate process)."""
        ...

    async def restart(self, kill: bool = False) -> None:
        """Stop the server (SIGTERM, or SIGKILL with ``kill``) and start it again; what it confirmed must survive.

        ``kill`` is asked only of servers whose module sets ``SURVIVES_KILL = True``.
        """
        ...

    async def close(self) -> None:
        """Close every client this handle made and remove what the tests created."""
        ...
