"""Named locks held until the end of the caller's transaction, for what no row can guard yet."""

from __future__ import annotations

from tidings.store.base import Store

__all__ = ["lock_until_commit"]


async def lock_until_commit(tx: Store, namespace: int, name: str) -> None:
    """Wait for, then hold, the lock ``name`` of ``namespace`` until ``tx``'s transaction ends.

    Call it inside ``store.transaction()``. PostgreSQL takes a transaction-scoped advisory lock
    on (``namespace``, hash of ``name``): two names may share a hash, which only serialises them.
    SQLite needs nothing, because every transaction begins with the write lock (BEGIN IMMEDIATE).
    """
    if tx.dialect == "postgresql":
        await tx.fetch("SELECT pg_advisory_xact_lock(?, hashtext(?))", (namespace, name))
