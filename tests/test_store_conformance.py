"""The store conformance suite: every backend (SQLite and PostgreSQL) must pass each of these as is."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from tidings import ConcurrencyError, Envelope
from tidings.messaging import new_id, utc_now
from tidings.store import (
    Changes,
    JournalEntry,
    OutboxEntry,
    SnapshotRow,
    StateRow,
    Store,
    StreamWrite,
    open_store,
)
from tidings.store.migrations import migrations_for

if TYPE_CHECKING:
    from support import StoreFactory

TABLES = ("journal", "aggregate_state", "snapshots", "outbox", "inbox", "checkpoints")


# -- builders ------------------------------------------------------------------------------------


def journal_entry(
    stream_id: str, version: int, *, correlation_id: str | None = None, payload: dict[str, Any] | None = None
) -> JournalEntry:
    """A journal entry for ``stream_id`` at ``version`` with a matching envelope."""
    event_id = new_id()
    now = utc_now()
    aggregate_type, _, aggregate_id = stream_id.partition(":")
    correlation_id = correlation_id or event_id
    envelope = Envelope(
        event_id=event_id,
        event_type="Probed",
        schema_version=1,
        occurred_at=now,
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        aggregate_version=version,
        correlation_id=correlation_id,
        source="conformance",
    )
    return JournalEntry(
        stream_id=stream_id,
        stream_version=version,
        event_id=event_id,
        event_type="Probed",
        schema_version=1,
        occurred_at=now,
        correlation_id=correlation_id,
        envelope=msgspec.json.encode(envelope),
        payload=msgspec.json.encode(payload or {"n": version}),
    )


def outbox_entry(key: str = "k-1", topic: str = "probes") -> OutboxEntry:
    """An outbox entry with a fresh event id."""
    event_id = new_id()
    envelope = Envelope(
        event_id=event_id, event_type="Probe", schema_version=1, occurred_at=utc_now(), correlation_id=event_id
    )
    return OutboxEntry(
        event_id=event_id,
        partition=3,
        partition_key=key,
        topic=topic,
        event_type="Probe",
        envelope=msgspec.json.encode(envelope),
        payload=b'{"probe":true}',
    )


def appended(aggregate_type: str, aggregate_id: str, *versions: int, correlation_id: str | None = None) -> Changes:
    """Changes that append ``versions`` to one stream, saved from the version before the first."""
    stream_id = f"{aggregate_type}:{aggregate_id}"
    return Changes(
        streams=[StreamWrite(aggregate_type, aggregate_id, stream_id, versions[0] - 1)],
        journal=[journal_entry(stream_id, v, correlation_id=correlation_id) for v in versions],
    )


async def table_counts(store: Store) -> dict[str, int]:
    """Row count of every table of the store."""
    return {table: await store.count(table) for table in TABLES}


# -- schema --------------------------------------------------------------------------------------


async def test_migrating_an_up_to_date_store_applies_nothing(store: Store) -> None:
    # Given a store the fixture has already migrated
    # When it is migrated again
    applied = await store.migrate()
    # Then nothing is applied and the tables are still there
    assert applied == []
    assert await table_counts(store) == dict.fromkeys(TABLES, 0)


async def test_two_concurrent_migrations_apply_each_migration_exactly_once(store: Store, tmp_path: Path) -> None:
    # Given a database that has never been migrated, opened by two stores (two "processes")
    if store.dialect == "sqlite":
        url, options, schema = f"sqlite:///{tmp_path / 'fresh.db'}", {}, None
    else:
        schema = f"fresh_{uuid.uuid4().hex[:12]}"
        url, options = store.url, {"schema": schema}
    first = await open_store(url, migrate=False, **options)
    second = await open_store(url, migrate=False, **options)
    try:
        # When both migrate at the same time
        results = await asyncio.gather(first.migrate(), second.migrate())
        # Then one of them applied every migration and the other found nothing to do
        every = [f"{m.version:04d}_{m.name}" for m in migrations_for(store.dialect)]
        assert sorted(results, key=len) == [[], every]
        assert await first.count("journal") == 0
        assert await second.migrate() == []
    finally:
        if schema:
            await first.drop_schema()  # type: ignore[attr-defined]
        await first.close()
        await second.close()


# -- the commit ----------------------------------------------------------------------------------


async def test_commit_writes_journal_state_snapshot_and_outbox_together(store: Store) -> None:
    # Given one unit of work's changes touching every written table
    changes = appended("License", "a", 1, 2)
    changes.states.append(StateRow("License", "a", 2, b'{"used":3}'))
    changes.snapshots.append(SnapshotRow("Counter:c", 3, b'{"value":9}'))
    changes.outbox.append(outbox_entry())
    # When it is committed
    await store.commit(changes)
    # Then all of it is there
    assert await table_counts(store) == {
        "journal": 2, "aggregate_state": 1, "snapshots": 1, "outbox": 1, "inbox": 0, "checkpoints": 0
    }
    state = await store.load_state("License", "a")
    assert state is not None and (state.version, msgspec.json.decode(state.state)) == (2, {"used": 3})
    snapshot = await store.load_snapshot("Counter:c")
    assert snapshot is not None and (snapshot.version, msgspec.json.decode(snapshot.state)) == (3, {"value": 9})
    assert [row.event_id for row in await store.read_outbox()] == [changes.outbox[0].event_id]


async def test_committed_events_read_back_as_written(store: Store) -> None:
    # Given a committed journal entry
    changes = appended("License", "a", 1)
    written = changes.journal[0]
    await store.commit(changes)
    # When it is read back
    (read,) = await store.load_stream("License:a")
    # Then every field survived the round trip (JSON compared as data: PostgreSQL normalises jsonb)
    assert (read.stream_id, read.stream_version, read.event_id, read.event_type, read.schema_version) == (
        written.stream_id, written.stream_version, written.event_id, written.event_type, written.schema_version
    )
    assert read.correlation_id == written.correlation_id
    assert read.occurred_at == written.occurred_at and read.occurred_at.tzinfo is not None
    assert msgspec.json.decode(read.payload) == msgspec.json.decode(written.payload)
    assert msgspec.json.decode(read.envelope, type=Envelope) == msgspec.json.decode(written.envelope, type=Envelope)
    assert read.position >= 1


async def test_later_commit_replaces_state_and_snapshot(store: Store) -> None:
    # Given an aggregate saved at version 1 with a snapshot
    first = appended("License", "a", 1)
    first.states.append(StateRow("License", "a", 1, b'{"used":1}'))
    first.snapshots.append(SnapshotRow("License:a", 1, b'{"used":1}'))
    await store.commit(first)
    # When it is saved again at version 2
    second = appended("License", "a", 2)
    second.states.append(StateRow("License", "a", 2, b'{"used":5}'))
    second.snapshots.append(SnapshotRow("License:a", 2, b'{"used":5}'))
    await store.commit(second)
    # Then one row each, holding the newest version
    state, snapshot = await store.load_state("License", "a"), await store.load_snapshot("License:a")
    assert state is not None and (state.version, msgspec.json.decode(state.state)) == (2, {"used": 5})
    assert snapshot is not None and (snapshot.version, msgspec.json.decode(snapshot.state)) == (2, {"used": 5})
    assert (await store.count("aggregate_state"), await store.count("snapshots")) == (1, 1)


async def test_conflicting_commit_raises_concurrency_error_and_writes_nothing(store: Store) -> None:
    # Given License a at version 2, with state, a snapshot elsewhere and an outbox row
    setup = appended("License", "a", 1, 2)
    setup.states.append(StateRow("License", "a", 2, b'{"used":1}'))
    setup.snapshots.append(SnapshotRow("Counter:c", 3, b'{"value":3}'))
    setup.outbox.append(outbox_entry())
    await store.commit(setup)
    before = await table_counts(store)
    # When a unit of work that loaded it at version 1 tries to commit: a new stream first (which
    # alone would succeed), then the conflicting version, a state update, a snapshot and an outbox row
    stale = Changes(
        streams=[StreamWrite("Other", "b", "Other:b", 0), StreamWrite("License", "a", "License:a", 1)],
        journal=[journal_entry("Other:b", 1), journal_entry("License:a", 2)],
        states=[StateRow("License", "a", 2, b'{"used":99}')],
        snapshots=[SnapshotRow("Counter:c", 6, b'{"value":6}')],
        outbox=[outbox_entry()],
    )
    with pytest.raises(ConcurrencyError) as caught:
        await store.commit(stale)
    # Then the error names the aggregate, the version it was saved from and the version it is at
    error = caught.value
    assert (error.aggregate_type, error.aggregate_id, error.expected, error.actual) == ("License", "a", 1, 2)
    assert "License a is at version 2, you saved from version 1" in str(error)
    # And nothing of that commit was written, not even the part that did not conflict
    assert await table_counts(store) == before
    assert await store.load_stream("Other:b") == []
    state, snapshot = await store.load_state("License", "a"), await store.load_snapshot("Counter:c")
    assert state is not None and msgspec.json.decode(state.state) == {"used": 1}
    assert snapshot is not None and snapshot.version == 3
    assert [row.event_id for row in await store.read_outbox()] == [setup.outbox[0].event_id]


async def test_racing_commits_on_two_stores_let_exactly_one_win(store_factory: StoreFactory) -> None:
    # Given two stores on one database, each with a commit of version 1 of the same stream
    first, second = await store_factory(), await store_factory()
    a, b = appended("License", "a", 1), appended("License", "a", 1)
    # When both commit at once
    outcomes = await asyncio.gather(first.commit(a), second.commit(b), return_exceptions=True)
    # Then one committed and the other got a ConcurrencyError
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], ConcurrencyError), outcomes
    assert (errors[0].expected, errors[0].actual) == (0, 1)
    (stored,) = await first.load_stream("License:a")
    winner = a if outcomes[0] is None else b
    assert stored.event_id == winner.journal[0].event_id


async def test_empty_changes_commit_as_a_no_op(store: Store) -> None:
    # Given nothing to write, When it is committed, Then no table changes
    await store.commit(Changes())
    assert await table_counts(store) == dict.fromkeys(TABLES, 0)


# -- reads ---------------------------------------------------------------------------------------


async def test_read_journal_is_in_position_order_and_respects_after_and_limit(store: Store) -> None:
    # Given five events in three commits over two streams
    commits = [appended("A", "1", 1, 2), appended("B", "1", 1), appended("A", "1", 3, 4)]
    for changes in commits:
        await store.commit(changes)
    written = [entry.event_id for changes in commits for entry in changes.journal]
    # When the journal is read whole, after a position, and with a limit
    everything = await store.read_journal()
    positions = [e.position for e in everything]
    after_second = await store.read_journal(after_position=positions[1])
    first_two = await store.read_journal(limit=2)
    middle = await store.read_journal(after_position=positions[1], limit=2)
    # Then it is in commit order with strictly increasing positions, and pages cleanly
    assert [e.event_id for e in everything] == written
    assert positions == sorted(set(positions))
    assert [e.event_id for e in after_second] == written[2:]
    assert [e.event_id for e in first_two] == written[:2]
    assert [e.event_id for e in middle] == written[2:4]
    assert await store.read_journal(after_position=positions[-1]) == []


async def test_load_stream_returns_one_stream_in_version_order_after_a_version(store: Store) -> None:
    # Given two interleaved streams
    await store.commit(appended("A", "1", 1, 2))
    await store.commit(appended("B", "1", 1))
    await store.commit(appended("A", "1", 3))
    # When stream A is loaded whole and after version 1
    # Then only A's events come back, in version order, and after_version skips the older ones
    assert [e.stream_version for e in await store.load_stream("A:1")] == [1, 2, 3]
    assert [e.stream_version for e in await store.load_stream("A:1", after_version=1)] == [2, 3]
    assert await store.load_stream("A:1", after_version=3) == []
    assert {e.stream_id for e in await store.load_stream("A:1")} == {"A:1"}
    assert await store.load_stream("missing:1") == []


async def test_stream_version_is_the_highest_stored_version_or_zero(store: Store) -> None:
    # Given a stream with three versions
    await store.commit(appended("A", "1", 1, 2, 3))
    # Then its version is 3 and an unknown stream's is 0
    assert await store.stream_version("A:1") == 3
    assert await store.stream_version("A:2") == 0


async def test_read_correlation_returns_only_that_correlation_in_order(store: Store) -> None:
    # Given events of two correlations, interleaved across commits and streams
    mine, theirs = new_id(), new_id()
    await store.commit(appended("A", "1", 1, 2, correlation_id=mine))
    await store.commit(appended("B", "1", 1, correlation_id=theirs))
    await store.commit(appended("C", "1", 1, correlation_id=mine))
    # When one correlation is read
    events = await store.read_correlation(mine)
    # Then exactly its events come back, in position order
    assert [(e.stream_id, e.stream_version) for e in events] == [("A:1", 1), ("A:1", 2), ("C:1", 1)]
    assert {e.correlation_id for e in events} == {mine}
    assert await store.read_correlation(new_id()) == []


async def test_correlation_ids_are_opaque_text(store: Store) -> None:
    # Given an event whose correlation id is not a UUID (a caller's request id)
    await store.commit(appended("A", "1", 1, correlation_id="req-2024-0042"))
    # When correlations are read by that id and by another non-UUID one
    # Then the first is found and the second is simply empty, on every backend
    assert [e.correlation_id for e in await store.read_correlation("req-2024-0042")] == ["req-2024-0042"]
    assert await store.read_correlation("no such thing") == []


async def test_load_state_and_snapshot_of_unknown_aggregates_are_none(store: Store) -> None:
    assert await store.load_state("License", "nobody") is None
    assert await store.load_snapshot("Counter:nobody") is None


@pytest.mark.parametrize("table", ["users", "tidings_journal", "journal; DROP TABLE tidings_journal", ""])
async def test_count_refuses_tables_it_does_not_know(store: Store, table: str) -> None:
    # Given a name that is not one of the store's tables, When it is counted, Then it is refused
    with pytest.raises(ValueError, match="unknown table"):
        await store.count(table)
    assert await store.count("journal") == 0  # and nothing was dropped


async def test_new_outbox_rows_are_pending_with_a_creation_time(store: Store) -> None:
    # Given two outbox rows committed together
    started = utc_now()
    entries = [outbox_entry("k-1", "licensing"), outbox_entry("k-2", "billing")]
    await store.commit(Changes(outbox=entries))
    # When the outbox is read
    rows = await store.read_outbox()
    # Then they are in insertion order, as written, never attempted, not delivered, not parked
    assert [row.event_id for row in rows] == [e.event_id for e in entries]
    assert [(r.partition, r.partition_key, r.topic, r.event_type) for r in rows] == [
        (3, "k-1", "licensing", "Probe"), (3, "k-2", "billing", "Probe")
    ]
    for row in rows:
        assert row.attempts == 0
        assert row.delivered_at is None and row.parked_at is None and row.last_error is None
        assert row.created_at.tzinfo is not None
        # The database's clock, not ours: allow a little skew either way.
        assert abs((row.created_at - started).total_seconds()) < 60
    assert msgspec.json.decode(rows[0].payload) == {"probe": True}
    assert [row.id for row in await store.read_outbox(limit=1)] == [rows[0].id]


async def test_a_commit_of_only_state_and_snapshots_is_written(store: Store) -> None:
    # Given changes that carry a state row and a snapshot but no journal or outbox rows
    changes = Changes(
        states=[StateRow("License", "solo", 1, b'{"sold": false}')],
        snapshots=[SnapshotRow("Counter:solo", 3, b'{"total": 3}')],
    )

    # When committed
    await store.commit(changes)

    # Then both rows are there (an empty-looking Changes must not be skipped)
    assert (await store.load_state("License", "solo")) is not None
    assert (await store.load_snapshot("Counter:solo")) is not None


# -- transactions --------------------------------------------------------------------------------

_INBOX = "INSERT INTO tidings_inbox (consumer, event_id) VALUES (?, ?) ON CONFLICT DO NOTHING"


class _Boom(Exception):
    """Raised inside a transaction to roll it back."""


async def test_a_transaction_commits_statements_and_a_unit_of_work_together(store: Store) -> None:
    # When an inbox row and a unit of work are written in one transaction
    async with store.transaction() as tx:
        assert await tx.run(_INBOX, ("billing", "e-1")) == 1
        await tx.commit(appended("License", "a", 1))
    # Then both are there
    assert await store.count("inbox") == 1 and await store.stream_version("License:a") == 1


async def test_an_error_in_a_transaction_rolls_back_everything_in_it(store: Store) -> None:
    # Given a transaction that writes an inbox row, a unit of work with an outbox row, then fails
    changes = appended("License", "a", 1)
    changes.outbox.append(outbox_entry())
    with pytest.raises(_Boom):
        async with store.transaction() as tx:
            await tx.run(_INBOX, ("billing", "e-1"))
            await tx.commit(changes)
            assert await tx.stream_version("License:a") == 1  # visible inside
            raise _Boom
    # Then nothing of it was written
    assert await table_counts(store) == dict.fromkeys(TABLES, 0)


async def test_a_duplicate_inbox_row_in_a_transaction_changes_nothing(store: Store) -> None:
    # Given a processed event, When it arrives again, Then the insert reports zero rows
    await store.run(_INBOX, ("billing", "e-1"))
    async with store.transaction() as tx:
        assert await tx.run(_INBOX, ("billing", "e-1")) == 0
        assert await tx.run(_INBOX, ("shipping", "e-1")) == 1
    assert await store.count("inbox") == 2


async def test_a_conflict_inside_a_transaction_undoes_only_that_commit(store: Store) -> None:
    # Given License a at version 1
    await store.commit(appended("License", "a", 1))
    async with store.transaction() as tx:
        await tx.run(_INBOX, ("billing", "e-1"))
        # When a stale commit fails inside the transaction
        with pytest.raises(ConcurrencyError):
            await tx.commit(appended("License", "a", 1))
        # Then the transaction goes on: a reload and retry commits
        await tx.commit(appended("License", "a", 2))
    assert await store.stream_version("License:a") == 2 and await store.count("inbox") == 1


async def test_other_tasks_never_see_or_join_an_open_transaction(store: Store) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        with pytest.raises(_Boom):
            async with store.transaction() as tx:
                await tx.run(_INBOX, ("billing", "inside"))
                entered.set()
                await release.wait()
                raise _Boom

    task = asyncio.create_task(holder())
    await entered.wait()
    # While the transaction is open, another task writes and reads
    outside = asyncio.create_task(store.run(_INBOX, ("billing", "outside")))
    seen = asyncio.create_task(store.fetch("SELECT event_id FROM tidings_inbox ORDER BY event_id"))
    # PostgreSQL serves them on other connections beside the open transaction: they finish while it is
    # open. SQLite has one connection: they queue behind the transaction until it ends.
    done, _ = await asyncio.wait({outside, seen}, timeout=5 if store.dialect == "postgresql" else 0.5)
    if store.dialect == "postgresql":
        assert done == {outside, seen}, "a write or read outside the open transaction waited for it"
    else:
        assert not done, "a write or read ran on SQLite's one connection while a transaction was open on it"
    release.set()
    await task
    await outside
    # Then the rolled-back row was never visible to it, and its own write survived the rollback
    assert ("inside",) not in await seen
    assert await store.fetch("SELECT event_id FROM tidings_inbox") == [("outside",)]
