"""The application on both stores: one transaction per command, concurrency, event sourcing, metadata, bad input."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model import (
    APP_NAME,
    AllowanceExceeded,
    Counter,
    Decrement,
    Increment,
    Incremented,
    License,
    LicenseOffered,
    LicensePurchased,
    LicensePurchaseConfirmed,
    OfferLicense,
    OverageBilled,
    OverageCharged,
    PurchaseLicense,
    ReportUsage,
    ResetCounter,
    SnapshottedCounter,
    UsageBill,
    UsageReported,
    execute_sql,
    make_app,
    plant_journal_row,
)
from tidings import (
    Aggregate,
    AggregateNotFound,
    Application,
    Command,
    CommandResult,
    ConcurrencyError,
    DomainError,
    DomainEvent,
    Envelope,
    EventSourcedAggregate,
    IncompatibleVersion,
    IntegrationEvent,
    MessageContext,
    MessageRegistry,
    MessageTooLarge,
    StateStoredAggregate,
    UnitOfWork,
    UnknownCommand,
    UnknownMessageType,
    ValidationError,
    applies,
)
from tidings.app import stream_id_of
from tidings.messaging import new_id, utc_now
from tidings.store import Store

if TYPE_CHECKING:
    from support import StoreFactory

TABLES = ("journal", "aggregate_state", "snapshots", "outbox", "inbox", "checkpoints")


# -- helpers -------------------------------------------------------------------------------------


async def table_counts(store: Store) -> dict[str, int]:
    """Row count of every table of the store."""
    return {table: await store.count(table) for table in TABLES}


def envelope_of(row: Any) -> Envelope:
    """The envelope stored with a journal or outbox row."""
    return msgspec.json.decode(row.envelope, type=Envelope)


async def sold_license(app: Application, allowance: int = 10) -> str:
    """Offer and sell a new license through ``app``; return its id (the license is then at version 2)."""
    license_id = new_id()
    await app.handle(OfferLicense(license_id=license_id, product="Editor", allowance=allowance))
    await app.handle(PurchaseLicense(license_id=license_id, buyer="ada"))
    return license_id


class Gate:
    """Holds every caller until ``parties`` have arrived, then stays open (a retry passes straight through)."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self.opened = asyncio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived >= self.parties:
            self.opened.set()
        await asyncio.wait_for(self.opened.wait(), timeout=5)


# -- one transaction per command -----------------------------------------------------------------


class ReportUsageThenCrash(Command):
    license_id: str
    units: int


async def test_command_handler_that_raises_after_recording_leaves_no_rows(store: Store) -> None:
    # Given a sold license and a handler that records usage over the allowance, then crashes
    app = make_app(store)
    license_id = await sold_license(app, allowance=1)

    @app.command_handler(ReportUsageThenCrash)
    async def crash(command: ReportUsageThenCrash, uow: UnitOfWork) -> None:
        license = await uow.get(License, command.license_id)
        license.report_usage(command.units)
        assert license.pending_events  # the crash really comes after recording
        raise RuntimeError("disk on fire")

    before = await table_counts(store)
    # When the command is handled
    with pytest.raises(RuntimeError, match="disk on fire"):
        await app.handle(ReportUsageThenCrash(license_id=license_id, units=5))
    # Then no journal, state or outbox row was written or changed
    assert await table_counts(store) == before
    state = await store.load_state("License", license_id)
    assert state is not None and state.version == 2


async def test_bus_handler_that_raises_after_events_and_publications_leaves_no_rows(store: Store) -> None:
    # Given a bus handler on the third event of a chain (License → bus → UsageBill) that publishes, then crashes
    app = make_app(store)
    license_id = await sold_license(app, allowance=1)

    @app.on(OverageCharged)
    def crash(event: OverageCharged, uow: UnitOfWork) -> None:
        uow.publish(OverageBilled(license_id=license_id, units=event.units))
        raise RuntimeError("billing is down")

    before = await table_counts(store)
    # When usage over the allowance is reported
    with pytest.raises(RuntimeError, match="billing is down"):
        await app.handle(ReportUsage(license_id=license_id, units=5))
    # Then neither aggregate, nor the journal, nor the outbox changed
    assert await table_counts(store) == before
    assert await store.load_state(UsageBill.aggregate_type, license_id) is None
    assert await store.stream_version(stream_id_of("License", license_id)) == 2


async def test_translator_that_raises_after_another_published_leaves_no_rows(store: Store) -> None:
    # Given a second translator of LicensePurchased that fails after the first one published
    app = make_app(store)

    @app.translator(LicensePurchased)
    def broken(event: LicensePurchased, envelope: Envelope) -> None:
        raise KeyError("no such field in the contract")

    license_id = new_id()
    await app.handle(OfferLicense(license_id=license_id, product="Editor"))
    before = await table_counts(store)
    # When the license is purchased
    with pytest.raises(KeyError):
        await app.handle(PurchaseLicense(license_id=license_id, buyer="ada"))
    # Then the purchase is not saved and nothing waits in the outbox
    assert await table_counts(store) == before
    assert await store.read_outbox() == []


# -- optimistic concurrency ----------------------------------------------------------------------


RACES = {
    # kind: (build the aggregate, its command with an amount, the event to pause on, read the amount back)
    "state-stored": (
        sold_license,
        lambda target, n: ReportUsage(license_id=target, units=n),
        UsageReported,
        lambda app, target: app.load(License, target),
    ),
    "event-sourced": (
        lambda app: _new_counter(app),
        lambda target, n: Increment(counter_id=target, by=n),
        Incremented,
        lambda app, target: app.load(Counter, target),
    ),
}


async def _new_counter(app: Application) -> str:
    counter_id = new_id()
    await app.handle(Increment(counter_id=counter_id, by=0, times=2))  # version 2, value 0
    return counter_id


def _amount(aggregate: Any) -> int:
    return aggregate.used if isinstance(aggregate, License) else aggregate.value


async def _racing_apps(store_factory: StoreFactory, pause_on: type) -> tuple[Application, Application, Gate]:
    """Two applications on two stores of one database whose handlers both load before either commits."""
    gate = Gate(parties=2)
    apps = (make_app(await store_factory()), make_app(await store_factory()))
    for app in apps:
        # Runs after the command handler loaded and recorded, before the commit: both writers
        # have read the same version by the time the gate opens.
        app.on(pause_on)(lambda event, uow: gate.wait())
    return apps[0], apps[1], gate


@pytest.mark.parametrize("kind", sorted(RACES))
async def test_racing_saves_commit_one_and_refuse_the_other(store_factory: StoreFactory, kind: str) -> None:
    create, command, pause_on, load = RACES[kind]
    first, second, gate = await _racing_apps(store_factory, pause_on)
    target = await create(make_app(await store_factory()))
    # When both save the aggregate loaded at version 2
    outcomes = await asyncio.gather(
        first.handle(command(target, 1)), second.handle(command(target, 2)), return_exceptions=True
    )
    # Then exactly one committed and the other got a ConcurrencyError naming what happened
    assert gate.arrived == 2
    results = [o for o in outcomes if isinstance(o, CommandResult)]
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(results) == 1 and len(errors) == 1 and isinstance(errors[0], ConcurrencyError), outcomes
    error = errors[0]
    assert (error.aggregate_id, error.expected, error.actual) == (target, 2, 3)
    # And the stored aggregate holds the winner's change only
    winner_amount = 1 if isinstance(outcomes[0], CommandResult) else 2
    aggregate = await load(first, target)
    assert (aggregate.version, _amount(aggregate)) == (3, winner_amount)


@pytest.mark.parametrize("kind", sorted(RACES))
async def test_racing_saves_with_one_retry_both_commit_in_sequence(store_factory: StoreFactory, kind: str) -> None:
    create, command, pause_on, load = RACES[kind]
    first, second, gate = await _racing_apps(store_factory, pause_on)
    target = await create(make_app(await store_factory()))
    # When both save the aggregate loaded at version 2, each allowed one retry
    outcomes = await asyncio.gather(
        first.handle(command(target, 1), retries=1), second.handle(command(target, 2), retries=1)
    )
    # Then both committed, one after the other, and the final state reflects both
    assert all(isinstance(o, CommandResult) for o in outcomes)
    assert gate.arrived == 3  # the loser ran its handler again
    versions = sorted(o.events[0].aggregate_version for o in outcomes)
    assert versions == [3, 4]
    aggregate = await load(first, target)
    assert (aggregate.version, _amount(aggregate)) == (4, 3)


# -- event sourcing and snapshots ----------------------------------------------------------------


counter_commands = st.lists(
    st.one_of(
        st.tuples(st.just("increment"), st.integers(1, 5), st.integers(1, 4)),
        st.tuples(st.just("decrement"), st.integers(1, 8)),
        st.tuples(st.just("reset")),
    ),
    min_size=1,
    max_size=8,
)


def _command_for(step: tuple[Any, ...], counter_id: str) -> Command:
    if step[0] == "increment":
        return Increment(counter_id=counter_id, by=step[1], times=step[2])
    if step[0] == "decrement":
        return Decrement(counter_id=counter_id, by=step[1])
    return ResetCounter(counter_id=counter_id)


def _apply_in_memory(counter: Counter, step: tuple[Any, ...]) -> None:
    """The same domain method the command handler calls, on an aggregate that never sees a store."""
    if counter.version == 0 and step[0] != "increment":
        raise AggregateNotFound(counter.aggregate_type, counter.id)
    if step[0] == "increment":
        counter.increment(step[1], step[2])
    elif step[0] == "decrement":
        counter.decrement(step[1])
    else:
        counter.reset()


@pytest.mark.parametrize("counter_class", [Counter, SnapshottedCounter], ids=["no-snapshots", "snapshot-every-3"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=counter_commands)
async def test_event_sourced_reload_equals_in_memory_state(
    store: Store, counter_class: type[Counter], steps: list[tuple[Any, ...]]
) -> None:
    # Given a fresh counter id (one store for every example: aggregates do not share streams)
    app = make_app(store, counter=counter_class)
    counter_id = new_id()
    expected = counter_class(counter_id)
    expected_snapshot: int | None = None
    # When the commands are handled, and the same methods are applied in memory
    for step in steps:
        loaded_at = expected.version
        try:
            _apply_in_memory(expected, step)
        except (DomainError, AggregateNotFound) as refused:
            with pytest.raises(type(refused)):
                await app.handle(_command_for(step, counter_id))
            continue
        expected.take_pending()
        await app.handle(_command_for(step, counter_id))
        every = counter_class.snapshot_every
        if every and expected.version // every > loaded_at // every:
            expected_snapshot = expected.version
    # Then loading from the store gives the in-memory state and version
    loaded = await app.repository.load(counter_class, counter_id)
    if expected.version == 0:
        assert loaded is None
        return
    assert loaded is not None
    assert (loaded.version, loaded.state()) == (expected.version, expected.state())
    # And a snapshot exists exactly when a commit crossed a multiple of snapshot_every
    stream_id = stream_id_of(counter_class.aggregate_type, counter_id)
    snapshot = await store.load_snapshot(stream_id)
    assert (snapshot.version if snapshot else None) == expected_snapshot
    if snapshot is not None:
        # And loading starts from it: the events it covers are not needed any more
        await execute_sql(
            store,
            "DELETE FROM tidings_journal WHERE stream_id = ? AND stream_version <= ?",
            (stream_id, snapshot.version),
        )
        from_snapshot = await make_app(store, counter=counter_class).repository.load(counter_class, counter_id)
        assert from_snapshot is not None
        assert (from_snapshot.version, from_snapshot.state()) == (expected.version, expected.state())


async def test_loading_uses_the_snapshot_when_the_events_before_it_are_gone(store: Store) -> None:
    # Given a counter with snapshots, incremented four times (a snapshot is written at version 3)
    app = make_app(store, counter=SnapshottedCounter)
    counter_id = new_id()
    for by in (1, 2, 3, 4):
        await app.handle(Increment(counter_id=counter_id, by=by))
    stream_id = stream_id_of(SnapshottedCounter.aggregate_type, counter_id)
    snapshot = await store.load_snapshot(stream_id)
    assert snapshot is not None and snapshot.version == 3
    # When the first three events are deleted from the journal
    await execute_sql(store, "DELETE FROM tidings_journal WHERE stream_id = ? AND stream_version <= 3", (stream_id,))
    # Then the counter still loads whole from the snapshot plus event 4, and keeps working
    result = await app.handle(Increment(counter_id=counter_id, by=10))
    assert result.value == 20
    loaded = await app.load(SnapshottedCounter, counter_id)
    assert loaded is not None and (loaded.version, loaded.value, loaded.steps) == (5, 20, [1, 2, 3, 4, 10])


async def test_counter_without_snapshot_every_writes_no_snapshots(store: Store) -> None:
    app = make_app(store, counter=Counter)
    await app.handle(Increment(counter_id=new_id(), by=1, times=7))
    assert await store.count("snapshots") == 0


# -- upcasting and unknown stored types ----------------------------------------------------------


async def test_v1_event_in_the_journal_is_upcast_to_v2_when_the_aggregate_loads(store: Store) -> None:
    # Given a counter whose first event was stored by old code as counter.Incremented v1 {"amount": 5}
    app = make_app(store)
    counter_id = new_id()
    await plant_journal_row(store, stream_id_of("Counter", counter_id), 1, "counter.Incremented", 1, b'{"amount":5}')
    # When the counter is loaded and changed
    result = await app.handle(Increment(counter_id=counter_id, by=2))
    # Then the old event was read as v2 ({"by": 5}) and the new one follows it at version 2
    assert result.value == 7
    loaded = await app.load(Counter, counter_id)
    assert loaded is not None and (loaded.version, loaded.steps) == (2, [5, 2])
    assert [e.schema_version for e in await store.load_stream(stream_id_of("Counter", counter_id))] == [1, 2]


async def test_v1_event_without_an_upcaster_is_refused_as_incompatible(store: Store) -> None:
    # Given the same v1 row, read by an application whose registry has no upcaster for it
    counter_id = new_id()
    await plant_journal_row(store, stream_id_of("Counter", counter_id), 1, "counter.Incremented", 1, b'{"amount":5}')
    app = make_app(store, upcasters=False)
    # When the counter is loaded, Then the error says which type and which step is missing
    with pytest.raises(IncompatibleVersion, match=r"counter.Incremented v1 cannot be read as v2: no upcaster from v1"):
        await app.load(Counter, counter_id)


async def test_unknown_stored_event_type_fails_clearly_and_writes_nothing(store: Store) -> None:
    # Given a counter stream holding an event type no code knows
    app = make_app(store)
    counter_id = new_id()
    stream_id = stream_id_of("Counter", counter_id)
    await plant_journal_row(store, stream_id, 1, "counter.Incremented", 2, b'{"by":1}')
    await plant_journal_row(store, stream_id, 2, "counter.Exploded", 1, b'{"how":"loudly"}')
    before = await table_counts(store)
    # When a command loads it
    with pytest.raises(UnknownMessageType) as caught:
        await app.handle(Increment(counter_id=counter_id, by=1))
    # Then the error names the stored type and lists what is known; nothing is written
    assert caught.value.name == "counter.Exploded"
    assert "'counter.Exploded'" in str(caught.value) and "counter.Incremented" in str(caught.value)
    assert await table_counts(store) == before


async def test_stored_event_newer_than_the_code_fails_clearly(store: Store) -> None:
    app = make_app(store)
    counter_id = new_id()
    await plant_journal_row(store, stream_id_of("Counter", counter_id), 1, "counter.Incremented", 3, b'{"by":1}')
    with pytest.raises(IncompatibleVersion, match=r"counter.Incremented v3 cannot be read as v2"):
        await app.handle(Increment(counter_id=counter_id, by=1))


# -- metadata ------------------------------------------------------------------------------------


async def _overage_flow(app: Application, context: MessageContext) -> tuple[str, CommandResult, CommandResult]:
    """Offer (own correlation, same tenant), then purchase and report usage over the allowance under ``context``."""
    license_id = new_id()
    await app.handle(OfferLicense(license_id=license_id, product="Editor", allowance=1), context=MessageContext(tenant=context.tenant))
    purchase = await app.handle(PurchaseLicense(license_id=license_id, buyer="ada"), context=context)
    usage = await app.handle(ReportUsage(license_id=license_id, units=3), context=context)
    return license_id, purchase, usage


async def test_context_is_on_every_stored_journal_and_outbox_envelope(store: Store) -> None:
    # Given a caller's context with a correlation id, a user and a tenant
    correlation_id = new_id()
    context = MessageContext(correlation_id=correlation_id, user_id="user-7", tenant="acme")
    # When two commands run under it (the second triggers the bus and two translators)
    await _overage_flow(make_app(store), context)
    # Then every journal row of the correlation, read back from the store, carries it
    journal = await store.read_correlation(correlation_id)
    assert [row.event_type for row in journal] == [
        "LicensePurchased", "UsageReported", "AllowanceExceeded", "OverageCharged"
    ]
    # And so does every outbox row
    outbox = await store.read_outbox()
    assert [row.event_type for row in outbox] == ["licensing.LicensePurchaseConfirmed", "licensing.OverageBilled"]
    for row in [*journal, *outbox]:
        envelope = envelope_of(row)
        assert (envelope.correlation_id, envelope.user_id, envelope.tenant, envelope.source) == (
            correlation_id, "user-7", "acme", APP_NAME
        ), row.event_type
        assert envelope.event_id == row.event_id and envelope.event_type == row.event_type
    assert {row.correlation_id for row in journal} == {correlation_id}


async def test_causation_links_command_to_events_and_events_to_what_they_caused(store: Store) -> None:
    # Given the overage flow
    license_id, purchase, usage = await _overage_flow(make_app(store), MessageContext(correlation_id=new_id()))
    journal = {row.event_type: envelope_of(row) for row in await store.read_correlation(usage.correlation_id)}
    outbox = {row.event_type: envelope_of(row) for row in await store.read_outbox()}
    # Then events the command handler recorded are caused by the command
    assert journal["LicensePurchased"].causation_id == purchase.command_id
    assert journal["UsageReported"].causation_id == usage.command_id
    assert journal["AllowanceExceeded"].causation_id == usage.command_id
    # And what a bus handler recorded is caused by the event it handled
    assert journal["OverageCharged"].causation_id == journal["AllowanceExceeded"].event_id
    # And each integration event is caused by the domain event it was translated from
    confirmed, billed = outbox["licensing.LicensePurchaseConfirmed"], outbox["licensing.OverageBilled"]
    assert confirmed.causation_id == journal["LicensePurchased"].event_id
    assert billed.causation_id == journal["OverageCharged"].event_id
    assert (billed.aggregate_type, billed.aggregate_id, billed.aggregate_version) == ("UsageBill", license_id, 1)
    # And the CommandResult agrees with what was stored
    assert [e.event_id for e in usage.events] == [
        journal[t].event_id for t in ("UsageReported", "AllowanceExceeded", "OverageCharged")
    ]
    assert [e.event_id for e in usage.published] == [billed.event_id]


async def test_correlation_defaults_to_the_command_id(store: Store) -> None:
    app = make_app(store)
    result = await app.handle(OfferLicense(license_id=new_id(), product="Editor"))
    assert result.correlation_id == result.command_id
    (row,) = await store.read_correlation(result.command_id)
    assert envelope_of(row).correlation_id == envelope_of(row).causation_id == result.command_id


async def test_a_correlation_id_that_is_not_a_uuid_is_kept_as_given(store: Store) -> None:
    # Given a caller whose correlation id comes from elsewhere (an HTTP request id)
    app = make_app(store)
    context = MessageContext(correlation_id="req-2024-0042")
    # When a command runs under it, Then both backends store and find it
    await app.handle(OfferLicense(license_id=new_id(), product="Editor"), context=context)
    (row,) = await store.read_correlation("req-2024-0042")
    assert envelope_of(row).correlation_id == "req-2024-0042"


async def test_aggregate_version_increments_per_aggregate_and_matches_the_journal(store: Store) -> None:
    app = make_app(store)
    license_id, _, _ = await _overage_flow(app, MessageContext())
    await app.handle(ReportUsage(license_id=license_id, units=1))  # over again: bill version 2
    rows = await store.read_journal()
    by_stream: dict[str, list[int]] = {}
    for row in rows:
        envelope = envelope_of(row)
        assert envelope.aggregate_version == row.stream_version
        assert stream_id_of(envelope.aggregate_type or "", envelope.aggregate_id or "") == row.stream_id
        by_stream.setdefault(row.stream_id, []).append(row.stream_version)
    assert by_stream == {stream_id_of("License", license_id): [1, 2, 3, 4, 5, 6],
                         stream_id_of("UsageBill", license_id): [1, 2]}


async def test_every_id_is_a_uuid7(store: Store) -> None:
    app = make_app(store)
    _, purchase, usage = await _overage_flow(app, MessageContext())
    ids = [purchase.command_id, usage.command_id]
    ids += [row.event_id for row in await store.read_journal()]  # offer 1, purchase 1, usage 3
    ids += [row.event_id for row in await store.read_outbox()]
    ids += [envelope_of(row).event_id for row in await store.read_journal()]
    assert len(ids) == 2 + 5 + 2 + 5 and len(set(ids)) == 2 + 5 + 2
    assert {uuid.UUID(i).version for i in ids} == {7}


# -- bad input -----------------------------------------------------------------------------------


async def test_command_field_of_the_wrong_type_is_refused_naming_the_field(store: Store) -> None:
    app = make_app(store)
    license_id = await sold_license(app)
    before = await table_counts(store)
    with pytest.raises(ValidationError) as caught:
        await app.handle(ReportUsage(license_id=license_id, units="lots"))  # type: ignore[arg-type]
    assert (caught.value.field, caught.value.message_type) == ("units", "ReportUsage")
    assert "ReportUsage.units" in str(caught.value)
    assert await table_counts(store) == before


async def test_command_value_refused_by_validate_names_the_field(store: Store) -> None:
    app = make_app(store)
    license_id = await sold_license(app)
    before = await table_counts(store)
    with pytest.raises(ValidationError) as caught:
        await app.handle(ReportUsage(license_id=license_id, units=0))
    assert caught.value.field == "units"
    assert await table_counts(store) == before


async def test_oversized_domain_event_is_refused_at_write_time_and_nothing_is_written(store: Store) -> None:
    # Given a limit of 200 bytes and an offer whose event encodes to more
    app = make_app(store, max_message_bytes=200)
    product = "x" * 300
    size = len(MessageRegistry.encode(LicenseOffered(product=product, allowance=10)))
    # When it is handled
    with pytest.raises(MessageTooLarge) as caught:
        await app.handle(OfferLicense(license_id=new_id(), product=product))
    # Then the error names the type, its size and the limit, and no table has a row
    assert (caught.value.name, caught.value.size, caught.value.limit) == ("LicenseOffered", size, 200)
    assert f"LicenseOffered encodes to {size} bytes, over the limit of 200 bytes" in str(caught.value)
    assert await table_counts(store) == dict.fromkeys(TABLES, 0)


async def test_oversized_integration_event_is_refused_and_the_domain_change_is_not_saved(store: Store) -> None:
    # Given an offered license and a limit that the domain event fits but its translation does not
    license_id = new_id()
    await make_app(store).handle(OfferLicense(license_id=license_id, product="Editor"))
    buyer = "b" * 100
    domain_size = len(MessageRegistry.encode(LicensePurchased(buyer=buyer)))
    public_size = len(MessageRegistry.encode(LicensePurchaseConfirmed(license_id=license_id, buyer=buyer)))
    assert domain_size < public_size
    strict = make_app(store, max_message_bytes=domain_size)
    before = await table_counts(store)
    # When the license is purchased
    with pytest.raises(MessageTooLarge) as caught:
        await strict.handle(PurchaseLicense(license_id=license_id, buyer=buyer))
    # Then the integration event is named, and neither journal, state nor outbox changed
    assert (caught.value.name, caught.value.size, caught.value.limit) == (
        "licensing.LicensePurchaseConfirmed", public_size, domain_size
    )
    assert await table_counts(store) == before
    loaded = await strict.repository.load(License, license_id)
    assert loaded is not None and (loaded.version, loaded.buyer) == (1, None)


class AuditLicense(Command):
    license_id: str


async def test_command_without_a_handler_is_refused_as_unknown(store: Store) -> None:
    app = make_app(store)
    with pytest.raises(UnknownCommand, match=r"no handler for AuditLicense; registered: .*PurchaseLicense"):
        await app.handle(AuditLicense(license_id=new_id()))
    assert await table_counts(store) == dict.fromkeys(TABLES, 0)


async def test_command_on_a_missing_aggregate_raises_aggregate_not_found(store: Store) -> None:
    app = make_app(store)
    missing = new_id()
    with pytest.raises(AggregateNotFound) as caught:
        await app.handle(PurchaseLicense(license_id=missing, buyer="ada"))
    assert (caught.value.aggregate_type, caught.value.aggregate_id) == ("License", missing)
    assert missing in str(caught.value)
    with pytest.raises(AggregateNotFound):
        await app.handle(Decrement(counter_id=missing))  # event-sourced too
    assert await table_counts(store) == dict.fromkeys(TABLES, 0)


async def test_second_purchase_is_refused_and_changes_nothing(store: Store) -> None:
    app = make_app(store)
    license_id = await sold_license(app)
    before = await table_counts(store)
    with pytest.raises(DomainError, match="already sold to ada"):
        await app.handle(PurchaseLicense(license_id=license_id, buyer="bob"))
    assert await table_counts(store) == before


# -- typed input, checked output -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Line:
    sku: str
    qty: int


class OrderPlaced(DomainEvent):
    lines: list[Line]
    placed_at: datetime
    reference: uuid.UUID
    tags: tuple[str, ...] = ()


class OrderConfirmed(IntegrationEvent, name="sales.OrderConfirmed", version=1):
    order_id: str
    units: int


class Order(StateStoredAggregate):
    """A state-stored order whose state holds nested values, a time, a UUID and a tuple."""

    lines: list[Line] = []
    placed_at: datetime | None = None
    reference: uuid.UUID | None = None
    tags: tuple[str, ...] = ()

    @applies
    def _placed(self, event: OrderPlaced) -> None:
        self.lines = list(event.lines)
        self.placed_at = event.placed_at
        self.reference = event.reference
        self.tags = event.tags


class PlaceOrder(Command):
    order_id: str
    lines: list[Line]
    placed_at: datetime
    reference: uuid.UUID
    tags: tuple[str, ...] = ()

    def validate(self) -> None:
        for index, line in enumerate(self.lines):
            if line.qty <= 0:
                raise ValidationError(f"must be positive, got {line.qty}", field=f"lines[{index}].qty", message_type="PlaceOrder")


def order_app(store: Store, seen: dict[str, Any]) -> Application:
    """An application that places orders and notes what its handler, bus handler and translator were given."""
    app = Application(store, name="sales")

    @app.command_handler(PlaceOrder)
    def place(command: PlaceOrder, uow: UnitOfWork) -> Order:
        seen["command"] = command
        order = Order(command.order_id)
        order.record(OrderPlaced(lines=command.lines, placed_at=command.placed_at, reference=command.reference, tags=command.tags))
        return order

    @app.on(OrderPlaced)
    def noted(event: OrderPlaced, uow: UnitOfWork) -> None:
        seen["bus"] = event

    @app.translator(OrderPlaced)
    def confirmed(event: OrderPlaced, envelope: Envelope) -> OrderConfirmed:
        seen["translator"] = event
        return OrderConfirmed(order_id=envelope.aggregate_id or "", units=sum(line.qty for line in event.lines))

    return app


def plain_order(order_id: str, *quantities: Any) -> PlaceOrder:
    """A PlaceOrder built from plain data, as a JSON body or a form would give it."""
    return PlaceOrder(
        order_id=order_id,
        lines=[{"sku": f"S{index}", "qty": qty} for index, qty in enumerate(quantities)],  # type: ignore[misc]
        placed_at="2026-03-01T12:30:00Z",  # type: ignore[arg-type]
        reference="0190f1c2-3d4e-7f00-8a9b-0c1d2e3f4a5b",  # type: ignore[arg-type]
        tags=["gift", "express"],  # type: ignore[arg-type]
    )


async def test_command_from_plain_data_is_converted_before_anyone_sees_it(store: Store) -> None:
    # Given an order command built from plain data: dicts for lines, strings for a time and a UUID, a list for a tuple
    seen: dict[str, Any] = {}
    app = order_app(store, seen)

    # When it is handled
    result = await app.handle(plain_order("o1", 2, 3))

    # Then the handler got the declared types
    command = seen["command"]
    assert command.lines == [Line(sku="S0", qty=2), Line(sku="S1", qty=3)]
    assert command.placed_at == datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    assert command.reference == uuid.UUID("0190f1c2-3d4e-7f00-8a9b-0c1d2e3f4a5b")
    assert command.tags == ("gift", "express")
    # And so did the domain bus and the translator (the events were built from the converted command)
    assert seen["bus"].lines[0] == Line(sku="S0", qty=2) and seen["translator"] is seen["bus"]
    assert result.published[0].event_type == "sales.OrderConfirmed"
    # And the aggregate in memory is the aggregate reloaded
    reloaded = await app.load(Order, "o1")
    assert result.value.state() == reloaded.state()
    assert isinstance(reloaded.lines[0], Line)


async def test_command_rule_runs_on_converted_values(store: Store) -> None:
    # Given a command from plain data whose second line breaks validate()'s rule (line.qty <= 0)
    app = order_app(store, {})

    # When it is handled / then validate() saw Line objects and refused with a ValidationError (no AttributeError)
    with pytest.raises(ValidationError) as caught:
        await app.handle(plain_order("o1", 1, 0))
    assert (caught.value.message_type, caught.value.field) == ("PlaceOrder", "lines[1].qty")
    assert await table_counts(store) == dict.fromkeys(TABLES, 0)


async def test_command_that_cannot_be_converted_names_the_field_path_and_the_expected_type(store: Store) -> None:
    # Given a command whose second line's quantity is not a number, and one whose time is not a time
    app = order_app(store, {})

    # When each is handled / then the error names the path and the expected type, and nothing is written
    with pytest.raises(ValidationError) as caught:
        await app.handle(plain_order("o1", 1, "two"))
    assert (caught.value.message_type, caught.value.field) == ("PlaceOrder", "lines[1].qty")
    assert "Expected `int`, got `str`" in str(caught.value)
    late = dataclasses.replace(plain_order("o2", 1), placed_at="tomorrow")  # type: ignore[arg-type]
    with pytest.raises(ValidationError) as caught:
        await app.handle(late)
    assert caught.value.field == "placed_at" and "datetime" in str(caught.value)
    assert await table_counts(store) == dict.fromkeys(TABLES, 0)


class PlaceOrderAsIs(Command):
    """Places an order from a command that is already well typed, with an event the handler may spoil."""

    order_id: str
    reference: str


async def test_domain_event_of_the_wrong_type_is_refused_before_the_commit(store: Store) -> None:
    # Given a handler that records an event whose reference is not a UUID (Python does not check)
    app = order_app(store, {})

    @app.command_handler(PlaceOrderAsIs)
    def place(command: PlaceOrderAsIs, uow: UnitOfWork) -> None:
        order = uow.add(Order(command.order_id))
        order.record(OrderPlaced(lines=[], placed_at=utc_now(), reference=command.reference))  # type: ignore[arg-type]

    # When it is handled / then the event's type and field are named, and nothing is written
    with pytest.raises(ValidationError) as caught:
        await app.handle(PlaceOrderAsIs(order_id="o1", reference="not-a-uuid"))
    assert (caught.value.message_type, caught.value.field) == ("OrderPlaced", "reference")
    assert await table_counts(store) == dict.fromkeys(TABLES, 0)


async def test_integration_event_of_the_wrong_type_is_refused_before_the_commit(store: Store) -> None:
    # Given a translator that breaks its public contract (units as a string)
    app = Application(store, name="sales")

    @app.command_handler(PlaceOrder)
    def place(command: PlaceOrder, uow: UnitOfWork) -> Order:
        order = Order(command.order_id)
        order.record(OrderPlaced(lines=command.lines, placed_at=command.placed_at, reference=command.reference))
        return order

    @app.translator(OrderPlaced)
    def confirmed(event: OrderPlaced, envelope: Envelope) -> OrderConfirmed:
        return OrderConfirmed(order_id="o1", units=str(len(event.lines)))  # type: ignore[arg-type]

    # When a command is handled / then the contract and field are named, and neither journal, state nor outbox is written
    with pytest.raises(ValidationError) as caught:
        await app.handle(plain_order("o1", 1))
    assert (caught.value.message_type, caught.value.field) == ("OrderConfirmed", "units")
    assert "sales.OrderConfirmed v1 was about to be written" in str(caught.value)
    assert await table_counts(store) == dict.fromkeys(TABLES, 0)


class TabOpened(DomainEvent):
    amount: int


class Tab(StateStoredAggregate):
    """A state-stored tab whose applier has a bug: it stores the total as text."""

    total: int = 0

    @applies
    def _opened(self, event: TabOpened) -> None:
        self.total = str(event.amount)  # type: ignore[assignment]


class SnapshottedTab(EventSourcedAggregate):
    """The same bug in an event-sourced tab that snapshots every version."""

    snapshot_every = 1
    total: int = 0

    @applies
    def _opened(self, event: TabOpened) -> None:
        self.total = str(event.amount)  # type: ignore[assignment]


class OpenTab(Command):
    tab_id: str


@pytest.mark.parametrize("tab_class", [Tab, SnapshottedTab], ids=["state", "snapshot"])
async def test_aggregate_state_of_the_wrong_type_is_refused_before_the_commit(store: Store, tab_class: type[Aggregate]) -> None:
    # Given an aggregate whose state (a row, or a snapshot) would not fit its declared types
    app = Application(store, name="bar")

    @app.command_handler(OpenTab)
    def open_tab(command: OpenTab, uow: UnitOfWork) -> Aggregate:
        tab = tab_class(command.tab_id)
        tab.record(TabOpened(amount=5))
        return tab

    # When it is saved / then the aggregate type and field are named, and nothing is written
    with pytest.raises(ValidationError) as caught:
        await app.handle(OpenTab(tab_id="t1"))
    assert (caught.value.message_type, caught.value.field) == (tab_class.__name__, "total")
    assert "t1" in str(caught.value)
    assert await table_counts(store) == dict.fromkeys(TABLES, 0)


class Shipment(StateStoredAggregate, name="sales.Shipment"):
    """An aggregate whose type name differs from its class name."""


def test_stream_id_of_takes_an_aggregate_class_or_its_type_name() -> None:
    # Given / when a stream id is asked for by class or by name / then both give "<aggregate type>:<id>"
    assert stream_id_of(Shipment, "s1") == stream_id_of("sales.Shipment", "s1") == "sales.Shipment:s1"
    assert stream_id_of(License, "l1") == "License:l1"
    # And anything else is refused, saying what it takes
    with pytest.raises(TypeError, match=r"stream_id_of takes an aggregate class or its aggregate_type name, got int"):
        stream_id_of(7, "x")  # type: ignore[arg-type]


# -- the domain bus ------------------------------------------------------------------------------


async def test_bus_handles_events_in_recording_order_then_what_handlers_recorded(store: Store) -> None:
    # Given handlers that log, and one on UsageReported that records on a Counter
    app = make_app(store)
    license_id = await sold_license(app, allowance=1)
    handled: list[str] = []

    @app.on(UsageReported)
    async def count_usage(event: UsageReported, uow: UnitOfWork) -> None:
        handled.append("UsageReported")
        counter = await uow.find(Counter, license_id) or uow.add(Counter(license_id))
        counter.increment(event.units)

    for event_type in (AllowanceExceeded, Incremented, OverageCharged):
        app.on(event_type)(lambda event, uow: handled.append(type(event).__name__))
    # When usage over the allowance records UsageReported then AllowanceExceeded
    result = await app.handle(ReportUsage(license_id=license_id, units=3))
    # Then both are handled before anything their handlers recorded (breadth first, not depth first)
    breadth_first = ["UsageReported", "AllowanceExceeded", "Incremented", "OverageCharged"]
    assert handled == breadth_first
    # And the journal holds them in that same order
    stored = await store.read_correlation(result.correlation_id)
    assert [row.event_type for row in stored] == [
        "UsageReported", "AllowanceExceeded", "counter.Incremented", "OverageCharged"
    ]


class TouchBoth(Command):
    license_id: str
    counter_id: str


async def test_bus_follows_recording_order_across_aggregates(store: Store) -> None:
    # Given a handler that records on a counter, then the license, then the counter again
    app = make_app(store)
    license_id, counter_id = await sold_license(app), new_id()
    handled: list[tuple[str, int]] = []

    @app.command_handler(TouchBoth)
    async def touch_both(command: TouchBoth, uow: UnitOfWork) -> None:
        counter = uow.add(Counter(command.counter_id))
        license = await uow.get(License, command.license_id)
        counter.increment(1)
        license.report_usage(1)
        counter.increment(2)

    app.on(Incremented)(lambda event, uow: handled.append(("Incremented", event.by)))
    app.on(UsageReported)(lambda event, uow: handled.append(("UsageReported", event.units)))
    # When it runs
    result = await app.handle(TouchBoth(license_id=license_id, counter_id=counter_id))
    # Then the bus and the journal see the events in the order they were recorded, not grouped by aggregate
    assert handled == [("Incremented", 1), ("UsageReported", 1), ("Incremented", 2)]
    stored = await store.read_correlation(result.correlation_id)
    assert [(row.event_type, row.stream_version) for row in stored] == [
        ("counter.Incremented", 1), ("UsageReported", 3), ("counter.Incremented", 2)
    ]


async def test_loading_an_unknown_aggregate_outside_a_command_names_it(store: Store) -> None:
    # Given an application with nothing saved
    app = make_app(store)

    # When an unknown id is loaded / then the error names the type and the id
    with pytest.raises(AggregateNotFound, match="License nobody does not exist"):
        await app.load(License, "nobody")
