"""Who relays which partitions: one relay per SQLite file; a fair share of advisory locks on PostgreSQL."""

from __future__ import annotations

import fcntl
import logging
import math
import os
import socket
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from tidings.messaging.envelope import utc_now
from tidings.store.base import Store

__all__ = ["Ownership", "ownership_for"]

log = logging.getLogger("tidings.relay")

#: Mixed with the schema into the first key of the two-int advisory lock; the second is the partition number.
_LOCK_NAMESPACE = 0x7464  # "td"
#: A relay whose heartbeat is older than this is presumed dead and does not count in the fair share.
_STALE_AFTER_S = 10.0


class Ownership(Protocol):
    """Decides the partitions this relay may publish from, and keeps that decision current."""

    relay_id: str

    async def rebalance(self) -> frozenset[int]:
        """Take or give back partitions towards a fair share; return the ones owned now."""
        ...

    async def release(self) -> None:
        """Give every partition back (on shutdown)."""
        ...

    async def wait_for_outbox(self, timeout: float, ready: Callable[[], Awaitable[bool]] | None = None) -> None:
        """Return when new outbox rows may have been committed, or after ``timeout`` seconds.

        ``ready`` re-checks the outbox once the relay has announced that it waits: a commit that
        came just before the announcement is found by it instead of being waited out.
        """
        ...


def ownership_for(store: Store, relay_id: str, partitions: int) -> Ownership:
    """The ownership scheme for this store's dialect."""
    if store.dialect == "postgresql":
        return PostgresOwnership(store, relay_id, partitions)
    return SqliteOwnership(store, relay_id, partitions)


class SqliteOwnership:
    """One relay per SQLite file, through an exclusive lock on a file beside it (freed when the process dies)."""

    def __init__(self, store: Store, relay_id: str, partitions: int) -> None:
        self.store = store
        self.relay_id = relay_id
        self.partitions = frozenset(range(partitions))
        path = getattr(store, "path", ":memory:")
        self._lock_path = None if path == ":memory:" else Path(f"{path}.relay.lock")
        self._fd: int | None = None
        self._said_waiting = False

    async def rebalance(self) -> frozenset[int]:
        if self._lock_path is None:
            return self.partitions
        if self._fd is None:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                if not self._said_waiting:
                    log.warning(
                        "relay %s: %s already relays %s; a SQLite store has one relay — waiting until it stops",
                        self.relay_id, holder, self.store.url,
                    )
                    self._said_waiting = True
                return frozenset()
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"relay {self.relay_id} (pid {os.getpid()})".encode(), 0)
            self._fd = fd
            if self._said_waiting:
                log.info("relay %s: took over %s", self.relay_id, self.store.url)
        return self.partitions

    async def wait_for_outbox(self, timeout: float, ready: Callable[[], Awaitable[bool]] | None = None) -> None:
        # Wakes at once for commits of this process (the signal stays set until waited on, so
        # none is lost); other processes' commits are found by polling.
        await self.store.wait_for_outbox(timeout)  # type: ignore[attr-defined]

    async def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class PostgresOwnership:
    """Session advisory locks, one per partition, on a connection of the relay's own.

    A relay that dies loses its connection and with it every lock, so the survivors pick its
    partitions up on their next rebalance. Each relay aims at ceil(partitions / live relays),
    counting the relays whose heartbeat in tidings_relays is fresh.
    """

    def __init__(self, store: Store, relay_id: str, partitions: int) -> None:
        self.store = store
        self.relay_id = relay_id
        self.partitions = partitions
        self._conn: Any = None
        self._owned: set[int] = set()
        self._started = utc_now()
        self._listening = False
        self._namespace = _LOCK_NAMESPACE

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._owned.clear()  # locks die with their connection
            self._listening = False
            self._conn = await self.store.dedicated_connection()  # type: ignore[attr-defined]
            # Advisory locks are database-wide, but each schema is an outbox of its own: keyed
            # by partition alone, a relay of another schema would hold our partitions and ours
            # would never be published. The schema goes into the first key.
            cur = await self._conn.execute("SELECT current_schema()")
            self._namespace = lock_namespace(_LOCK_NAMESPACE, (await cur.fetchone())[0])
        return self._conn

    async def rebalance(self) -> frozenset[int]:
        conn = await self._connection()
        now = utc_now()
        await conn.execute(
            "INSERT INTO tidings_relays (relay_id, host, pid, backend_pid, started_at, heartbeat_at, partitions) "
            "VALUES (%s, %s, %s, pg_backend_pid(), %s, %s, %s) ON CONFLICT (relay_id) DO UPDATE SET "
            "heartbeat_at = excluded.heartbeat_at, partitions = excluded.partitions, backend_pid = excluded.backend_pid",
            (self.relay_id, socket.gethostname(), os.getpid(), self._started, now, _csv(self._owned)),
        )
        # A relay counts while its lock connection exists: a killed relay drops out at once (its
        # locks are gone too), a hung one after the heartbeat goes stale.
        cur = await conn.execute(
            "SELECT count(*) FROM tidings_relays r WHERE r.heartbeat_at > now() - make_interval(secs => %s) "
            "AND EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = r.backend_pid)",
            (_STALE_AFTER_S,),
        )
        live = max(1, int((await cur.fetchone())[0]))
        share = math.ceil(self.partitions / live)
        # Give back the highest-numbered extras first so shares converge without ping-pong.
        for partition in sorted(self._owned, reverse=True)[: max(0, len(self._owned) - share)]:
            await conn.execute("SELECT pg_advisory_unlock(%s, %s)", (self._namespace, partition))
            self._owned.discard(partition)
        if len(self._owned) < share:
            # Start at a relay-specific offset so relays starting together do not race for partition 0.
            start = hash(self.relay_id) % self.partitions
            for i in range(self.partitions):
                partition = (start + i) % self.partitions
                if partition in self._owned:
                    continue
                cur = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (self._namespace, partition))
                if (await cur.fetchone())[0]:
                    self._owned.add(partition)
                    if len(self._owned) >= share:
                        break
        await conn.execute(
            "UPDATE tidings_relays SET partitions = %s WHERE relay_id = %s", (_csv(self._owned), self.relay_id)
        )
        await conn.execute(
            "DELETE FROM tidings_relays WHERE heartbeat_at < now() - make_interval(secs => %s)", (_STALE_AFTER_S * 6,)
        )
        return frozenset(self._owned)

    async def release(self) -> None:
        if self._conn is not None and not self._conn.closed:
            try:
                await self._conn.execute("SELECT pg_advisory_unlock_all()")
                await self._conn.execute("DELETE FROM tidings_relays WHERE relay_id = %s", (self.relay_id,))
            finally:
                await self._conn.close()
        self._owned.clear()

    async def wait_for_outbox(self, timeout: float, ready: Callable[[], Awaitable[bool]] | None = None) -> None:
        """Sleep until a commit wrote outbox rows (LISTEN/NOTIFY) or ``timeout`` passes.

        Commits notify only while some relay is marked waiting (migration 0006: a notification
        per commit serialised all commits). So: listen, mark ourselves waiting, re-check the
        outbox with ``ready``, and only then sleep. A commit whose trigger ran before the mark and
        that committed after the re-check is the one case left to the ``timeout`` poll.
        """
        conn = await self._connection()
        if not self._listening:
            await conn.execute("LISTEN tidings_outbox")
            self._listening = True
        await conn.execute("UPDATE tidings_relays SET waiting = true WHERE relay_id = %s", (self.relay_id,))
        try:
            if ready is not None and await ready():
                return
            # psycopg keeps notifications that arrive while this connection runs other statements
            # (rebalancing) and yields them first, so a commit during a rebalance is not missed.
            try:
                async for _ in conn.notifies(timeout=timeout, stop_after=1):
                    break
            except TimeoutError:
                pass
        finally:
            if not conn.closed:
                await conn.execute("UPDATE tidings_relays SET waiting = false WHERE relay_id = %s", (self.relay_id,))


def lock_namespace(namespace: int, schema: str | None) -> int:
    """The first advisory-lock key for ``namespace`` in ``schema``: a signed 32-bit int, different per schema."""
    value = zlib.crc32(f"{namespace}\x00{schema or ''}".encode())
    return value - 2**32 if value >= 2**31 else value


def _csv(partitions: set[int]) -> str:
    return ",".join(str(p) for p in sorted(partitions))
