"""The table of data subjects' wrapped keys: found by key id (to read) or subject digest (to write), deleted to forget.

The statements are plain ``?``-placeholder SQL that both dialects accept, so they run through the
store's ``fetch``/``run`` on whatever connection or transaction the caller holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tidings.store.base import Store

__all__ = ["WrappedKey", "keys_by_id", "keys_by_digest", "insert_keys", "delete_subject"]


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """One subject's data key as stored: wrapped by the master key whose id is ``master_key_id``."""

    key_id: str
    subject_digest: str
    master_key_id: str
    wrapped_key: bytes


_COLUMNS = "key_id, subject_digest, master_key_id, wrapped_key"


async def keys_by_id(store: Store, key_ids: Sequence[str]) -> list[WrappedKey]:
    """The keys among ``key_ids`` that still exist (a forgotten subject's key is simply absent)."""
    if not key_ids:
        return []
    marks = ", ".join("?" * len(key_ids))
    rows = await store.fetch(f"SELECT {_COLUMNS} FROM tidings_subject_keys WHERE key_id IN ({marks})", list(key_ids))
    return [WrappedKey(r[0], r[1], r[2], bytes(r[3])) for r in rows]


async def keys_by_digest(store: Store, digests: Sequence[str]) -> list[WrappedKey]:
    """The keys of the subjects whose digests are given, where they exist."""
    if not digests:
        return []
    marks = ", ".join("?" * len(digests))
    rows = await store.fetch(
        f"SELECT {_COLUMNS} FROM tidings_subject_keys WHERE subject_digest IN ({marks})", list(digests)
    )
    return [WrappedKey(r[0], r[1], r[2], bytes(r[3])) for r in rows]


async def insert_keys(store: Store, keys: Sequence[WrappedKey]) -> None:
    """Store new subjects' keys; a subject that got a key meanwhile (a racing writer) keeps that one."""
    await store.run_many(
        f"INSERT INTO tidings_subject_keys ({_COLUMNS}) VALUES (?, ?, ?, ?) ON CONFLICT (subject_digest) DO NOTHING",
        [(k.key_id, k.subject_digest, k.master_key_id, k.wrapped_key) for k in keys],
    )


async def delete_subject(store: Store, digest: str) -> int:
    """Delete the key of one subject; the number of keys deleted (0 if it had none)."""
    return await store.run("DELETE FROM tidings_subject_keys WHERE subject_digest = ?", (digest,))
