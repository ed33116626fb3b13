"""Data subjects' keys in the store: the key ring of one unit of work, and forgetting a subject.

Keys are found by key id (to read) or subject digest (to write) and deleted to forget. The
statements are plain ``?``-placeholder SQL that both dialects accept, so they run through the
store's ``fetch``/``run`` on whatever connection or transaction the caller holds (docs/decisions/0019).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tidings.messaging.personal import MASTER_KEY_ENV, KeyRing, MasterKey, WrappedKey, WrongMasterKey, master_key
from tidings.store.base import Store

__all__ = ["SubjectKeys", "check_master_key", "forget_subject", "keys_by_id", "keys_by_digest", "insert_keys", "delete_subject"]


class SubjectKeys(KeyRing):
    """The subject keys of one unit of work: fetched in one query per batch, cached for the unit only."""

    def __init__(self, store: Store, master: MasterKey | None = None) -> None:
        super().__init__(master)
        self.store = store

    async def prepare_subjects(self, subjects: Iterable[str], what: str) -> None:
        """Have a key for each subject: one query for those not cached, and an insert for new subjects."""
        missing = self.missing_subjects(subjects)
        if not missing:
            return
        master = self.master(what)
        digests = {master.digest(subject): subject for subject in missing}
        self.remember(master, await keys_by_digest(self.store, list(digests)), digests)
        unknown = self.missing_subjects(missing)
        new = [digest for digest, subject in digests.items() if subject in unknown]
        if new:
            fresh = []
            for digest in new:
                key_id = secrets.token_urlsafe(12)
                fresh.append(WrappedKey(key_id, digest, master.id, master.wrap(key_id, AESGCM.generate_key(256))))
            await insert_keys(self.store, fresh)
            # Read back: a racing writer may have stored its own key for the subject first.
            self.remember(master, await keys_by_digest(self.store, new), digests)

    async def prepare_payloads(self, payloads: Iterable[bytes | str], what: str = "reading personal data") -> None:
        """Fetch, in one query, the keys that the sealed fields of ``payloads`` refer to."""
        wanted = self.missing_key_ids(payloads)
        if not wanted:
            return
        master = self.master(what)
        self.remember(master, await keys_by_id(self.store, sorted(wanted)))
        self.forgotten(wanted)  # the ones not found: their subjects were forgotten


async def check_master_key(store: Store, what: str) -> MasterKey:
    """The configured master key, checked against the keys in the store; a clear error if it is missing or another.

    Workers that handle personal fields call it when they start: a configuration error stops
    them with its reason, instead of failing (and dead-lettering) message after message.
    """
    master = master_key(what)
    rows = await store.fetch("SELECT master_key_id FROM tidings_subject_keys WHERE master_key_id <> ? LIMIT 1", (master.id,))
    if rows:
        raise WrongMasterKey(
            f"{what} cannot open this store's personal data: its subject keys were wrapped by master key {rows[0][0]}, "
            f"but {MASTER_KEY_ENV} is master key {master.id} — set the master key this store was written with"
        )
    return master


async def forget_subject(store: Store, subject: str, master: MasterKey | None = None) -> bool:
    """Delete the data key of ``subject``: its personal data reads as the mask from now on. False if it had none."""
    master = master or master_key("forgetting a subject")
    return await delete_subject(store, master.digest(subject)) > 0


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
