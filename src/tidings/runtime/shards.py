"""Which shards of a consumer this process reads: a fair share each, and every shard read by one process at a time.

A consumer's keys are split into shards (``crc32(key) % shards``); each shard is a broker group of
its own, read by exactly one live process, so the processes of one consumer share the work and
each key is still applied in order. Ownership is a lock that dies with its holder: a session
advisory lock on PostgreSQL (on a connection of the member's own), an exclusive ``flock`` on a
file beside a SQLite database. Members announce themselves in ``tidings_consumer_members`` with a
heartbeat; each aims at ``ceil(shards / live members)``.

Giving a shard back is two steps, because the consumer must first finish what it holds of that
shard (``rebalance`` names the surplus, ``hand_back`` unlocks it after the drain).
"""

from __future__ import annotations

import fcntl
import math
import os
import re
import socket
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tidings.messaging.envelope import utc_now
from tidings.store.base import Store

__all__ = ["ShardPlan", "ShardOwnership", "shard_of", "shard_ownership"]

#: First key of the two-int advisory lock ("tc"); the second is derived from consumer and shard.
_LOCK_NAMESPACE = 0x7463
#: A member whose heartbeat is older than this is presumed dead and does not count in the fair share.
_STALE_AFTER_S = 10.0


def shard_of(key: str, shards: int) -> int:
    """The shard that reads ``key`` (CRC-32, the same in every process)."""
    return zlib.crc32(key.encode()) % shards if shards > 1 else 0


@dataclass(frozen=True, slots=True)
class ShardPlan:
    """The outcome of one rebalance: what is owned, what should be handed back, whether others were seen."""

    owned: frozenset[int]
    surplus: frozenset[int]
    #: Another member (live, or dead with its row still there) exists: a shard taken now may have
    #: been read by it, so its unsettled messages may still be on their way back.
    others_seen: bool


class ShardOwnership(Protocol):
    """Takes a fair share of a consumer's shards and keeps the member's heartbeat."""

    member_id: str

    async def rebalance(self) -> ShardPlan:
        """Heartbeat, take free shards up to the fair share, and name the owned ones beyond it."""
        ...

    async def hand_back(self, shards: frozenset[int]) -> None:
        """Unlock shards this member drained (another member may take them at once)."""
        ...

    async def release(self) -> None:
        """Unlock everything and leave (on shutdown)."""
        ...


def shard_ownership(store: Store, consumer: str, member_id: str, shards: int) -> ShardOwnership:
    """The ownership scheme for this store's dialect."""
    if store.dialect == "postgresql":
        return PostgresShards(store, consumer, member_id, shards)
    return SqliteShards(store, consumer, member_id, shards)


class _Members:
    """The members table, shared by both schemes."""

    def __init__(self, store: Store, consumer: str, member_id: str) -> None:
        self.store = store
        self.consumer = consumer
        self.member_id = member_id
        self.started = utc_now()

    async def heartbeat(self, owned: set[int], backend_pid: int = 0) -> None:
        now = utc_now()
        await self.store.run(
            "INSERT INTO tidings_consumer_members (consumer, member_id, host, pid, backend_pid, started_at, heartbeat_at, shards) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (consumer, member_id) DO UPDATE SET "
            "heartbeat_at = excluded.heartbeat_at, shards = excluded.shards, backend_pid = excluded.backend_pid",
            (self.consumer, self.member_id, socket.gethostname(), os.getpid(), backend_pid, self.started, now, _csv(owned)),
        )

    async def others(self) -> int:
        rows = await self.store.fetch(
            "SELECT count(*) FROM tidings_consumer_members WHERE consumer = ? AND member_id <> ?",
            (self.consumer, self.member_id),
        )
        return int(rows[0][0])

    async def forget_stale(self) -> None:
        cutoff = utc_now().timestamp() - _STALE_AFTER_S * 6
        rows = await self.store.fetch(
            "SELECT member_id, heartbeat_at FROM tidings_consumer_members WHERE consumer = ?", (self.consumer,)
        )
        for member_id, heartbeat_at in rows:
            if _timestamp(heartbeat_at) < cutoff:
                await self.store.run(
                    "DELETE FROM tidings_consumer_members WHERE consumer = ? AND member_id = ?", (self.consumer, member_id)
                )

    async def leave(self) -> None:
        await self.store.run(
            "DELETE FROM tidings_consumer_members WHERE consumer = ? AND member_id = ?", (self.consumer, self.member_id)
        )


class SqliteShards:
    """Shards of a consumer on a SQLite store: one lock file per shard beside the database."""

    def __init__(self, store: Store, consumer: str, member_id: str, shards: int) -> None:
        self.store = store
        self.member_id = member_id
        self.shards = shards
        self._members = _Members(store, consumer, member_id)
        path = getattr(store, "path", ":memory:")
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", consumer)
        self._lock_base = None if path == ":memory:" else f"{path}.consumer-{safe}"
        self._fds: dict[int, int] = {}

    async def rebalance(self) -> ShardPlan:
        if self._lock_base is None:
            return ShardPlan(frozenset(range(self.shards)), frozenset(), False)  # one process: nobody to share with
        await self._members.heartbeat(set(self._fds))
        cutoff = utc_now().timestamp() - _STALE_AFTER_S
        rows = await self.store.fetch(
            "SELECT heartbeat_at FROM tidings_consumer_members WHERE consumer = ?", (self._members.consumer,)
        )
        live = max(1, sum(1 for (heartbeat_at,) in rows if _timestamp(heartbeat_at) > cutoff))
        share = math.ceil(self.shards / live)
        start = zlib.crc32(self.member_id.encode()) % self.shards
        for i in range(self.shards):
            if len(self._fds) >= share:
                break
            shard = (start + i) % self.shards
            if shard not in self._fds:
                self._try_lock(shard)
        surplus = frozenset(sorted(self._fds, reverse=True)[: max(0, len(self._fds) - share)])
        others = await self._members.others() > 0
        await self._members.heartbeat(set(self._fds))
        await self._members.forget_stale()
        return ShardPlan(frozenset(self._fds), surplus, others)

    def _try_lock(self, shard: int) -> None:
        fd = os.open(f"{self._lock_base}.{shard}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return
        self._fds[shard] = fd

    async def hand_back(self, shards: frozenset[int]) -> None:
        for shard in shards:
            fd = self._fds.pop(shard, None)
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        if self._lock_base is not None:
            await self._members.heartbeat(set(self._fds))

    async def release(self) -> None:
        await self.hand_back(frozenset(self._fds))
        if self._lock_base is not None:
            await self._members.leave()


class PostgresShards:
    """Shards of a consumer on PostgreSQL: session advisory locks on a connection of the member's own.

    A member that dies loses its connection and with it every lock, so the survivors take its
    shards on their next rebalance; it stops counting as live at once (its backend is gone).
    """

    def __init__(self, store: Store, consumer: str, member_id: str, shards: int) -> None:
        self.store = store
        self.consumer = consumer
        self.member_id = member_id
        self.shards = shards
        self._members = _Members(store, consumer, member_id)
        self._conn: Any = None
        self._owned: set[int] = set()
        self._backend_pid = 0
        self._schema = ""

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._owned.clear()  # locks die with their connection
            self._conn = await self.store.dedicated_connection()  # type: ignore[attr-defined]
            cur = await self._conn.execute("SELECT pg_backend_pid(), current_schema()")
            pid, schema = await cur.fetchone()
            self._backend_pid, self._schema = int(pid), str(schema)
        return self._conn

    def _lock_key(self, shard: int) -> int:
        # Advisory locks are database-wide: without the schema, a consumer of the same name in
        # another schema (another deployment in the same database) would hold our shards.
        value = zlib.crc32(f"{self._schema}\x00{self.consumer}\x00{shard}".encode())
        return value - (1 << 32) if value >= (1 << 31) else value  # a signed int4

    async def rebalance(self) -> ShardPlan:
        conn = await self._connection()
        await self._members.heartbeat(self._owned, self._backend_pid)
        # A member counts while its lock connection exists: a killed one drops out at once.
        cur = await conn.execute(
            "SELECT count(*) FROM tidings_consumer_members m WHERE m.consumer = %s "
            "AND m.heartbeat_at > now() - make_interval(secs => %s) "
            "AND EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = m.backend_pid)",
            (self.consumer, _STALE_AFTER_S),
        )
        live = max(1, int((await cur.fetchone())[0]))
        share = math.ceil(self.shards / live)
        if len(self._owned) < share:
            # Start at a member-specific shard so members starting together do not race for shard 0.
            start = zlib.crc32(self.member_id.encode()) % self.shards
            for i in range(self.shards):
                shard = (start + i) % self.shards
                if shard in self._owned:
                    continue
                cur = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (_LOCK_NAMESPACE, self._lock_key(shard)))
                if (await cur.fetchone())[0]:
                    self._owned.add(shard)
                    if len(self._owned) >= share:
                        break
        # Hand back the highest-numbered extras first so shares converge without ping-pong.
        surplus = frozenset(sorted(self._owned, reverse=True)[: max(0, len(self._owned) - share)])
        others = await self._members.others() > 0
        await self._members.heartbeat(self._owned, self._backend_pid)
        await self._members.forget_stale()
        return ShardPlan(frozenset(self._owned), surplus, others)

    async def hand_back(self, shards: frozenset[int]) -> None:
        if self._conn is None or self._conn.closed:
            self._owned.difference_update(shards)
            return
        for shard in shards:
            if shard in self._owned:
                await self._conn.execute("SELECT pg_advisory_unlock(%s, %s)", (_LOCK_NAMESPACE, self._lock_key(shard)))
                self._owned.discard(shard)
        await self._members.heartbeat(self._owned, self._backend_pid)

    async def release(self) -> None:
        try:
            if self._conn is not None and not self._conn.closed:
                await self._conn.execute("SELECT pg_advisory_unlock_all()")
            await self._members.leave()
        finally:
            if self._conn is not None:
                await self._conn.close()
            self._owned.clear()


def _csv(shards: set[int]) -> str:
    return ",".join(str(s) for s in sorted(shards))


def _timestamp(value: Any) -> float:
    from datetime import datetime

    return (value if isinstance(value, datetime) else datetime.fromisoformat(value)).timestamp()
