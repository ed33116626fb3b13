"""Handle a command or publish a message inside the user's own transaction (psycopg or SQLAlchemy, on PostgreSQL).

A service that already commits its own database session wants tidings' rows — journal, state,
outbox — in *that* transaction: its ORM rows and our outbox rows commit together, its rollback
leaves nothing, and tidings never commits or rolls back a transaction it did not open. The store
is told to run this task's statements on the user's connection for the duration of the call
(``PostgresStore.joined``); our commit becomes a savepoint in their transaction, so a
ConcurrencyError undoes our rows only and leaves their transaction usable. The relay wakes when
the user commits: the outbox trigger's NOTIFY is transactional and is delivered by that commit.

Only PostgreSQL: see docs/decisions/0025-the-users-transaction.md for why a user's SQLite
connection cannot be joined soundly.

    async with session.begin():
        session.add(Invoice(...))
        await joined.handle(app, PurchaseLicense(...), session=session)
        await joined.publish(app, InvoiceIssued(...), key=invoice_id, session=session)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tidings.app.application import Application, CommandResult
from tidings.app.outgoing import outbox_entry
from tidings.domain.messages import Command, Message
from tidings.messaging.envelope import Envelope, MessageContext
from tidings.messaging.personal import personal_fields, subjects_of
from tidings.store.lazy import NoTransaction
from tidings.store.records import Changes
from tidings.store.subject_keys import SubjectKeys

if TYPE_CHECKING:
    import psycopg

    from tidings.store.postgres import PostgresStore

__all__ = ["CannotJoin", "NoTransaction", "Outbox", "handle", "publish", "driver_connection"]

_SQLITE_WHY = (
    "tidings' SQLite store writes on its own sqlite3 connection on the event loop's thread, and SQLite has one "
    "writer at a time: rows written there are not part of your connection's transaction, and while your "
    "transaction holds the write lock ours cannot begin. On SQLite, run your SQL inside the command instead "
    "(uow.execute / uow.connection(), which commit with it), or use PostgreSQL"
)


class CannotJoin(TypeError):
    """The connection or store given cannot share one transaction with tidings (wrong kind, or SQLite)."""


async def handle(
    app: Application,
    command: Command,
    *,
    session: Any = None,
    connection: psycopg.AsyncConnection[Any] | None = None,
    context: MessageContext | None = None,
    retries: int = 0,
) -> CommandResult:
    """Handle ``command`` inside the caller's open transaction; its rows commit when the caller commits.

    Pass exactly one of ``session`` (a SQLAlchemy ``AsyncSession`` or ``AsyncConnection`` on the
    psycopg driver, inside ``begin()``) or ``connection`` (a psycopg ``AsyncConnection`` the caller
    owns). Nothing is committed here. On a ConcurrencyError our rows are undone (a savepoint) and
    the caller's transaction stays usable: roll it back, or reload and retry (``retries`` does).
    NoTransaction when no transaction is open; CannotJoin for SQLite or another driver.
    """
    store = _postgres_store(app)
    conn = await driver_connection(session=session, connection=connection)
    async with store.joined(conn):
        return await app.handle(command, context=context, retries=retries)


async def publish(
    app: Application,
    message: Message,
    *,
    key: str,
    session: Any = None,
    connection: psycopg.AsyncConnection[Any] | None = None,
    topic: str | None = None,
    context: MessageContext | None = None,
) -> Envelope:
    """Add ``message`` to the outbox in the caller's open transaction (no aggregate involved); its envelope.

    ``key`` is the partition key (messages with one key are delivered in commit order); ``topic``
    defaults to the message class's ``topic`` attribute, else its message name. The message is
    published only if the caller commits.
    """
    store = _postgres_store(app)
    conn = await driver_connection(session=session, connection=connection)
    app.registry.register(type(message))  # so what reads this outbox back can decode it
    async with store.joined(conn):
        keys = None
        if personal_fields(type(message)):
            # Personal fields are sealed like a unit of work's; a new subject's key commits with the row.
            keys = SubjectKeys(store)
            await keys.prepare_subjects(
                subjects_of(message, message.message_name), f"{message.message_name}, which has personal fields,"
            )
        envelope, entry = outbox_entry(
            message,
            topic=topic or getattr(type(message), "topic", None) or message.message_name,
            key=key,
            source=app.name,
            context=context,
            partitions=app.partitions,
            max_message_bytes=app.max_message_bytes,
            keys=keys,
        )
        await store.commit(Changes(outbox=[entry]))
    return envelope


class Outbox:
    """``outbox.add(message, key=…, session=…)``: publish in the caller's transaction, for code with no aggregate."""

    def __init__(self, app: Application) -> None:
        self.app = app

    async def add(
        self,
        message: Message,
        *,
        key: str,
        session: Any = None,
        connection: psycopg.AsyncConnection[Any] | None = None,
        topic: str | None = None,
        context: MessageContext | None = None,
    ) -> Envelope:
        """Publish ``message`` when the caller's transaction commits (see :func:`publish`)."""
        return await publish(
            self.app, message, key=key, session=session, connection=connection, topic=topic, context=context
        )


async def driver_connection(*, session: Any = None, connection: Any = None) -> psycopg.AsyncConnection[Any]:
    """The psycopg connection under a SQLAlchemy session or connection (or ``connection`` itself), checked.

    NoTransaction when the SQLAlchemy session has no transaction begun (its autobegin would open
    one nobody commits); CannotJoin for SQLite or a driver other than psycopg.
    """
    if (session is None) == (connection is None):
        raise TypeError("pass one of session= (a SQLAlchemy AsyncSession/AsyncConnection) or connection= (psycopg)")
    if connection is not None:
        import psycopg

        if not isinstance(connection, psycopg.AsyncConnection):
            raise CannotJoin(
                f"connection= takes a psycopg AsyncConnection, got {type(connection).__name__}; for SQLAlchemy pass session="
            )
        return connection
    try:
        from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    except ImportError:
        raise CannotJoin("session= needs SQLAlchemy: pip install 'tidings[sqlalchemy]'") from None
    if isinstance(session, AsyncSession):
        if not session.in_transaction():
            raise NoTransaction(
                "the SQLAlchemy session has no transaction begun, so nothing would commit our rows; "
                "call this inside `async with session.begin():`"
            )
        sa_connection = await session.connection()
    elif isinstance(session, AsyncConnection):
        if not session.in_transaction():
            raise NoTransaction(
                "the SQLAlchemy connection has no transaction begun; call this inside `async with connection.begin():`"
            )
        sa_connection = session
    else:
        raise CannotJoin(
            f"session= takes a SQLAlchemy AsyncSession or AsyncConnection, got {type(session).__name__}"
        )
    dialect = sa_connection.dialect
    if dialect.name == "sqlite":
        raise CannotJoin(f"cannot join a SQLite session: {_SQLITE_WHY}")
    if dialect.name != "postgresql" or dialect.driver != "psycopg":
        raise CannotJoin(
            f"the session uses {dialect.name}+{dialect.driver}; tidings joins PostgreSQL through psycopg 3: "
            "create the engine with a postgresql+psycopg:// URL"
        )
    raw = await sa_connection.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None  # a checked-out connection always has its driver connection
    return driver  # type: ignore[no-any-return]


def _postgres_store(app: Application) -> PostgresStore:
    from tidings.store.postgres import PostgresStore

    if isinstance(app.store, PostgresStore):
        return app.store
    if app.store.dialect == "sqlite":
        raise CannotJoin(f"application {app.name!r} runs on SQLite, whose store cannot join your transaction: {_SQLITE_WHY}")
    raise CannotJoin(f"application {app.name!r} runs on a {type(app.store).__name__}, which cannot join a psycopg transaction")
