"""Loading aggregates of both persistence styles from a store."""

from __future__ import annotations

from typing import TypeVar

from tidings.domain.aggregate import Aggregate
from tidings.domain.errors import WrongTenant
from tidings.messaging.personal import is_sealed
from tidings.messaging.registry import MessageRegistry
from tidings.messaging.state import StateCodec
from tidings.store.base import Store
from tidings.store.subject_keys import SubjectKeys

__all__ = ["Repository", "stream_id_of"]

A = TypeVar("A", bound=Aggregate)


def stream_id_of(aggregate_type: str | type[Aggregate], aggregate_id: str) -> str:
    """The journal stream of one aggregate, given its class or its ``aggregate_type`` name: ``"License:lic-1"``."""
    if type(aggregate_type) is not str:
        if isinstance(aggregate_type, type) and issubclass(aggregate_type, Aggregate):
            aggregate_type = aggregate_type.aggregate_type
        else:
            raise TypeError(
                "stream_id_of takes an aggregate class or its aggregate_type name, "
                f"got {type(aggregate_type).__name__} {aggregate_type!r}"
            )
    return f"{aggregate_type}:{aggregate_id}"


class Repository:
    """Turns stored rows back into aggregates: a state row, or a snapshot plus the events after it."""

    def __init__(self, store: Store, registry: MessageRegistry) -> None:
        self.store = store
        self.registry = registry
        self._codecs: dict[type[Aggregate], StateCodec] = {}
        self._known: set[type[Aggregate]] = set()

    def codec(self, aggregate_type: type[Aggregate]) -> StateCodec:
        """The state codec of an aggregate class (built once)."""
        codec = self._codecs.get(aggregate_type)
        if codec is None:
            codec = self._codecs[aggregate_type] = StateCodec(aggregate_type)
        return codec

    async def snapshot(self, aggregate_type: type[A], aggregate_id: str, keys: SubjectKeys | None = None) -> A | None:
        """The event-sourced aggregate as its latest snapshot holds it (version included), without the events after it.

        None when no snapshot was written yet (``snapshot_every`` unset, or fewer versions than it).
        """
        if not aggregate_type.event_sourced:
            raise TypeError(
                f"{aggregate_type.__name__} is state-stored: its saved state is the whole aggregate, load it with load(); "
                "snapshots belong to event-sourced aggregates"
            )
        snapshot = await self.store.load_snapshot(stream_id_of(aggregate_type.aggregate_type, aggregate_id))
        if snapshot is None:
            return None
        keys = keys or SubjectKeys(self.store)
        if is_sealed(snapshot.state):
            await keys.prepare_payloads([snapshot.state])
        return aggregate_type.restore(aggregate_id, snapshot.version, self.codec(aggregate_type).decode(snapshot.state, keys))

    async def load(
        self, aggregate_type: type[A], aggregate_id: str, keys: SubjectKeys | None = None, *, tenant: str | None = None
    ) -> A | None:
        """The aggregate as last committed, or None if it was never saved.

        With a ``tenant``, an aggregate another tenant owns (or none) raises WrongTenant: this is
        the one place where loads for commands and queries are checked (docs/decisions/0018).
        Personal fields are opened with ``keys`` (the unit of work's; a fresh ring if None), so a
        forgotten subject's fields hold their masks.
        """
        keys = keys or SubjectKeys(self.store)
        if not aggregate_type.event_sourced:
            row = await self.store.load_state(aggregate_type.aggregate_type, aggregate_id)
            if row is None:
                return None
            _check_tenant(aggregate_type, aggregate_id, tenant, row.tenant)
            if is_sealed(row.state):
                await keys.prepare_payloads([row.state])
            return aggregate_type.restore(aggregate_id, row.version, self.codec(aggregate_type).decode(row.state, keys))

        if aggregate_type not in self._known:
            self.registry.register(*aggregate_type.appliers())
            self._known.add(aggregate_type)
        stream_id = stream_id_of(aggregate_type.aggregate_type, aggregate_id)
        aggregate: A | None = None
        after = 0
        owner: str | None = None
        if aggregate_type.snapshot_every:
            snapshot = await self.store.load_snapshot(stream_id)
            if snapshot is not None:
                if is_sealed(snapshot.state):
                    await keys.prepare_payloads([snapshot.state])
                state = self.codec(aggregate_type).decode(snapshot.state, keys)
                aggregate = aggregate_type.restore(aggregate_id, snapshot.version, state)
                after, owner = snapshot.version, snapshot.tenant
        stored = await self.store.load_stream(stream_id, after)
        if aggregate is None:
            if not stored:
                return None
            aggregate = aggregate_type.restore(aggregate_id, 0, {})
            owner = stored[0].tenant  # the tenant of the event that created it
        _check_tenant(aggregate_type, aggregate_id, tenant, owner)
        await keys.prepare_payloads(e.payload for e in stored)
        aggregate.replay(self.registry.decode(e.event_type, e.schema_version, e.payload, keys) for e in stored)  # type: ignore[misc]
        return aggregate


def _check_tenant(aggregate_type: type[Aggregate], aggregate_id: str, tenant: str | None, owner: str | None) -> None:
    # Without a tenant the caller is the platform itself (a single-tenant deployment, an operator's
    # tool): it may load anything. With one, only what that tenant owns; an aggregate created
    # without a tenant belongs to no tenant.
    if tenant is not None and owner != tenant:
        raise WrongTenant(aggregate_type.aggregate_type, aggregate_id, tenant)
