"""The unit of work: the aggregates one command touches and the messages it adds, committed together."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from tidings.domain.aggregate import Aggregate
from tidings.domain.errors import AggregateNotFound, ValidationError
from tidings.messaging.contracts import IntegrationEvent, partition_key_of, warn_if_deprecated
from tidings.messaging.envelope import Envelope

if TYPE_CHECKING:
    from tidings.app.application import Application
    from tidings.store.subject_keys import SubjectKeys

__all__ = ["UnitOfWork", "PendingPublication"]

A = TypeVar("A", bound=Aggregate)


@dataclass(slots=True)
class PendingPublication:
    """An integration event waiting for the commit, with where it goes and what caused it."""

    event: IntegrationEvent
    topic: str
    #: None only until the command handler returns (see UnitOfWork.resolve_keys).
    partition_key: str | None
    causation_id: str
    cause: Envelope | None
    #: The aggregate a command handler's publication is about (set with its key), for the envelope.
    about: Aggregate | None = None


class UnitOfWork:
    """What a command handler (and the in-transaction handlers it triggers) reads and changes.

    Reads go to the store as they are asked for; nothing is written until the application
    commits the whole unit, so a handler that raises leaves no trace at all. SQL of the
    handler's own goes through :meth:`execute` (or :meth:`connection`) and commits with it.

    Attributes:
        cause: the Envelope of the domain event the running domain-bus handler (or translator)
            is handling — its ids, type, aggregate and version; None in the command handler
            itself. ``publish`` takes its default key and the published envelope's aggregate
            from it.
        causation_id: the id of what is being handled right now: the command's id in the
            command handler, then each event's id as the bus runs. It becomes the
            ``causation_id`` of whatever is recorded or published meanwhile.
        publications: the integration events published so far, waiting for the commit.
        loaded_versions: the version of each tracked aggregate when it was loaded (0 if new).
    """

    def __init__(self, app: Application, keys: SubjectKeys | None = None) -> None:
        self._app = app
        #: The subject keys this unit has fetched (personal fields are opened and sealed with them).
        self.keys = keys
        self._aggregates: dict[tuple[type[Aggregate], str], Aggregate] = {}
        self.loaded_versions: dict[tuple[type[Aggregate], str], int] = {}
        self.publications: list[PendingPublication] = []
        #: The message being handled right now: the command's id, then each event's as the bus runs.
        self.causation_id: str = ""
        self.cause: Envelope | None = None
        #: The tenant the command runs for: it loads only that tenant's aggregates (None: any).
        self.tenant: str | None = None

    async def get(self, aggregate_type: type[A], aggregate_id: str) -> A:
        """The aggregate with that id, loaded once per unit of work; AggregateNotFound if it does not exist."""
        aggregate = await self.find(aggregate_type, aggregate_id)
        if aggregate is None:
            raise AggregateNotFound(aggregate_type.aggregate_type, aggregate_id)
        return aggregate

    async def find(self, aggregate_type: type[A], aggregate_id: str) -> A | None:
        """Like :meth:`get`, but None when the aggregate does not exist (WrongTenant if another tenant's)."""
        key = (aggregate_type, aggregate_id)
        tracked = self._aggregates.get(key)
        if tracked is not None:
            return tracked  # type: ignore[return-value]
        aggregate = await self._app.repository.load(aggregate_type, aggregate_id, self.keys, tenant=self.tenant)
        if aggregate is not None:
            self._track(key, aggregate)
        return aggregate

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one SQL statement (``?`` placeholders, on SQLite and PostgreSQL alike) in this command's transaction.

        Returns its rows (empty for a statement that returns none). What it writes commits with
        the command's journal, state and outbox rows, or not at all: a handler that raises later
        leaves none of it. The first such statement begins a real transaction (a command without
        SQL of its own commits in one statement); ``store.run()`` and ``store.fetch()`` called
        while the command runs join the same transaction.
        """
        return await self._app.store.fetch(sql, params)

    async def connection(self) -> Any:
        """The database connection of this command's transaction (sqlite3 or psycopg), for a driver-level API.

        Statements run on it commit with the command. Await the calls in the handler itself:
        a task the handler starts does not belong to the command.
        """
        return await self._app.store.connection()

    def add(self, aggregate: A) -> A:
        """Track a new aggregate so its recorded events are saved with this unit of work."""
        key = (type(aggregate), aggregate.id)
        if key in self._aggregates and self._aggregates[key] is not aggregate:
            raise ValueError(f"{aggregate.aggregate_type} {aggregate.id} is already part of this unit of work")
        self._track(key, aggregate, loaded_version=aggregate.version - len(aggregate.pending_events))
        return aggregate

    def publish(self, event: IntegrationEvent, *, topic: str | None = None, key: str | None = None) -> None:
        """Append an integration event to the outbox of this transaction (published only if it commits).

        ``key`` is the partition key: messages with one key are delivered in commit order. By
        default it is the value of the field the contract declares as ``key=``; without one, the aggregate the event is about: in a domain-bus handler, the aggregate
        whose event is being handled; in a command handler, the one aggregate the handler loaded
        or added (or returned). A command handler that touched several aggregates, or none, must
        pass ``key=`` — otherwise the command is refused with a ValidationError before anything
        is written, because a guessed key would put one aggregate's publications in different
        partitions and lose their order.
        """
        if not isinstance(event, IntegrationEvent):
            raise TypeError(f"publish takes an IntegrationEvent, got {type(event).__name__}")
        contract = type(event)
        if contract.contract_key is not None and key is None:
            key = partition_key_of(event)
        if key is None and self.cause is not None and self.cause.aggregate_id:
            key = self.cause.aggregate_id
        if contract.contract_deprecated_after is not None:
            warn_if_deprecated(contract)
        self.publications.append(
            PendingPublication(
                event=event,
                topic=topic or contract.contract_topic or event.message_name,
                partition_key=key,
                causation_id=self.causation_id,
                cause=self.cause,
            )
        )

    def resolve_keys(self) -> None:
        """Key what the command handler published without a key by its one aggregate; refuse if it has not one."""
        unkeyed = [p for p in self.publications if p.partition_key is None]
        if not unkeyed:
            return
        if len(self._aggregates) == 1:
            only = next(iter(self._aggregates.values()))
            for publication in unkeyed:
                publication.partition_key, publication.about = only.id, only
            return
        touched = ", ".join(f"{a.aggregate_type} {a.id}" for a in self._aggregates.values())
        raise ValidationError(
            f"uow.publish({unkeyed[0].event.message_name}) in a command handler that touched "
            f"{len(self._aggregates)} aggregates{f' ({touched})' if touched else ''} needs key=: pass the id of "
            "the aggregate the event is about, so its publications stay in one partition, in order",
            message_type=type(unkeyed[0].event).__name__,
        )

    @property
    def aggregates(self) -> list[Aggregate]:
        """Every aggregate this unit of work touched, in the order it was first loaded or added."""
        return list(self._aggregates.values())

    def tracked(self) -> list[tuple[Aggregate, int]]:
        """Each tracked aggregate with the version it had when loaded (0 for a new one)."""
        return [(aggregate, self.loaded_versions[key]) for key, aggregate in self._aggregates.items()]

    def _track(self, key: tuple[type[Aggregate], str], aggregate: Aggregate, loaded_version: int | None = None) -> None:
        self._aggregates[key] = aggregate
        self.loaded_versions[key] = aggregate.version if loaded_version is None else loaded_version
