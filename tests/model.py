"""A small licensing domain used by the application and store tests: one aggregate of each persistence style.

- ``License`` is state-stored: offered, purchased once, usage reported against an allowance; usage
  over the allowance records a second event, which a domain-bus handler turns into a charge on
  another aggregate (``UsageBill``), so causation of handler-recorded events can be checked.
- ``Counter`` is event-sourced; ``SnapshottedCounter`` is the same with a snapshot every 3 versions.
  Its ``Incremented`` event is at version 2 (v1 called the field ``amount``), upcast on read.
"""

from __future__ import annotations

from typing import Any

import msgspec

from tidings import (
    Application,
    Command,
    DomainError,
    DomainEvent,
    Envelope,
    EventSourcedAggregate,
    IntegrationEvent,
    StateStoredAggregate,
    UnitOfWork,
    ValidationError,
    applies,
)
from tidings.messaging import new_id, utc_now
from tidings.store import Store

APP_NAME = "licensing"

# -- domain events -------------------------------------------------------------------------------


class LicenseOffered(DomainEvent):
    product: str
    allowance: int


class LicensePurchased(DomainEvent):
    buyer: str


class UsageReported(DomainEvent):
    units: int


class AllowanceExceeded(DomainEvent):
    license_id: str
    over_by: int


class OverageCharged(DomainEvent):
    units: int


class Incremented(DomainEvent, name="counter.Incremented", version=2):
    by: int


class Decremented(DomainEvent, name="counter.Decremented"):
    by: int


class CounterReset(DomainEvent, name="counter.Reset"):
    pass


# -- integration events --------------------------------------------------------------------------


class LicensePurchaseConfirmed(IntegrationEvent, name="licensing.LicensePurchaseConfirmed", version=1):
    license_id: str
    buyer: str


class OverageBilled(IntegrationEvent, name="licensing.OverageBilled", version=1):
    license_id: str
    units: int


# -- aggregates ----------------------------------------------------------------------------------


class License(StateStoredAggregate):
    """A software license: offered with an allowance of units, bought by one buyer, then used."""

    product: str = ""
    allowance: int = 0
    buyer: str | None = None
    used: int = 0

    @classmethod
    def offer(cls, license_id: str, product: str, allowance: int) -> License:
        """A new license on offer."""
        license = cls(license_id)
        license.record(LicenseOffered(product=product, allowance=allowance))
        return license

    def purchase(self, buyer: str) -> None:
        """Sell the license to ``buyer``; a license is sold once."""
        if self.buyer is not None:
            raise DomainError(f"License {self.id} is already sold to {self.buyer}")
        self.record(LicensePurchased(buyer=buyer))

    def report_usage(self, units: int) -> None:
        """Count ``units`` used; going over the allowance records AllowanceExceeded for the excess."""
        if self.buyer is None:
            raise DomainError(f"License {self.id} is not sold; usage cannot be reported")
        before = max(0, self.used - self.allowance)
        self.record(UsageReported(units=units))
        after = max(0, self.used - self.allowance)
        if after > before:
            self.record(AllowanceExceeded(license_id=self.id, over_by=after - before))

    @applies
    def _offered(self, event: LicenseOffered) -> None:
        self.product = event.product
        self.allowance = event.allowance

    @applies
    def _purchased(self, event: LicensePurchased) -> None:
        self.buyer = event.buyer

    @applies
    def _used(self, event: UsageReported) -> None:
        self.used += event.units


class UsageBill(StateStoredAggregate):
    """Overage charges of one license (same id), changed only by the domain bus."""

    charged_units: int = 0

    def charge(self, units: int) -> None:
        """Add ``units`` of overage to the bill."""
        self.record(OverageCharged(units=units))

    @applies
    def _charged(self, event: OverageCharged) -> None:
        self.charged_units += event.units


class Counter(EventSourcedAggregate):
    """A counter that never goes below zero; its state is rebuilt from its events."""

    value: int = 0
    steps: list[int] = []

    def increment(self, by: int, times: int = 1) -> None:
        """Add ``by``, ``times`` times (one event each, so one command can cross a snapshot boundary)."""
        for _ in range(times):
            self.record(Incremented(by=by))

    def decrement(self, by: int) -> None:
        """Subtract ``by``; refused if the counter would go below zero."""
        if by > self.value:
            raise DomainError(f"Counter {self.id} is at {self.value}; cannot take away {by}")
        self.record(Decremented(by=by))

    def reset(self) -> None:
        """Back to zero (the history of steps is kept)."""
        self.record(CounterReset())

    @applies
    def _incremented(self, event: Incremented) -> None:
        self.value += event.by
        self.steps.append(event.by)

    @applies
    def _decremented(self, event: Decremented) -> None:
        self.value -= event.by
        self.steps.append(-event.by)

    @applies
    def _reset(self, event: CounterReset) -> None:
        self.steps.append(-self.value)
        self.value = 0


class SnapshottedCounter(Counter):
    """The same counter, with a snapshot written whenever a commit crosses a multiple of 3 versions."""

    snapshot_every = 3


# -- commands ------------------------------------------------------------------------------------


class OfferLicense(Command):
    license_id: str
    product: str
    allowance: int = 10


class PurchaseLicense(Command):
    license_id: str
    buyer: str


class ReportUsage(Command):
    license_id: str
    units: int

    def validate(self) -> None:
        if self.units <= 0:
            raise ValidationError(f"must be positive, got {self.units}", field="units", message_type="ReportUsage")


class Increment(Command):
    counter_id: str
    by: int = 1
    times: int = 1


class Decrement(Command):
    counter_id: str
    by: int = 1


class ResetCounter(Command):
    counter_id: str


# -- the application -----------------------------------------------------------------------------


def make_app(
    store: Store, *, counter: type[Counter] = Counter, upcasters: bool = True, name: str = APP_NAME, **options: Any
) -> Application:
    """The licensing application on ``store``; ``counter`` picks the counter class (with or without snapshots).

    ``upcasters=False`` builds it as if the v1 → v2 upcaster of ``counter.Incremented`` had been forgotten.
    """
    app = Application(store, name=name, **options)

    if upcasters:

        @app.registry.upcaster(Incremented, 1)
        def _amount_renamed_to_by(data: dict[str, Any]) -> dict[str, Any]:
            data["by"] = data.pop("amount")
            return data

    @app.command_handler(OfferLicense)
    def offer(command: OfferLicense, uow: UnitOfWork) -> License:
        return License.offer(command.license_id, command.product, command.allowance)

    @app.command_handler(PurchaseLicense)
    async def purchase(command: PurchaseLicense, uow: UnitOfWork) -> None:
        license = await uow.get(License, command.license_id)
        license.purchase(command.buyer)

    @app.command_handler(ReportUsage)
    async def report_usage(command: ReportUsage, uow: UnitOfWork) -> None:
        license = await uow.get(License, command.license_id)
        license.report_usage(command.units)

    @app.on(AllowanceExceeded)
    async def bill_overage(event: AllowanceExceeded, uow: UnitOfWork) -> None:
        bill = await uow.find(UsageBill, event.license_id) or uow.add(UsageBill(event.license_id))
        bill.charge(event.over_by)

    @app.translator(LicensePurchased, topic="licensing")
    def purchase_confirmed(event: LicensePurchased, envelope: Envelope) -> LicensePurchaseConfirmed:
        assert envelope.aggregate_id is not None  # translated events always come from an aggregate
        return LicensePurchaseConfirmed(license_id=envelope.aggregate_id, buyer=event.buyer)

    @app.translator(OverageCharged, topic="billing")
    def overage_billed(event: OverageCharged, envelope: Envelope) -> OverageBilled:
        assert envelope.aggregate_id is not None  # translated events always come from an aggregate
        return OverageBilled(license_id=envelope.aggregate_id, units=event.units)

    async def counter_of(counter_id: str, uow: UnitOfWork) -> Counter:
        return await uow.find(counter, counter_id) or uow.add(counter(counter_id))

    @app.command_handler(Increment)
    async def increment(command: Increment, uow: UnitOfWork) -> int:
        target = await counter_of(command.counter_id, uow)
        target.increment(command.by, command.times)
        return target.value

    @app.command_handler(Decrement)
    async def decrement(command: Decrement, uow: UnitOfWork) -> int:
        target = await uow.get(counter, command.counter_id)
        target.decrement(command.by)
        return target.value

    @app.command_handler(ResetCounter)
    async def reset(command: ResetCounter, uow: UnitOfWork) -> int:
        target = await uow.get(counter, command.counter_id)
        target.reset()
        return target.value

    return app


# -- raw store access (for tests that must plant rows no application would write) ----------------


async def execute_sql(store: Store, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement written with ``?`` placeholders on either backend and return its rows."""
    if store.dialect == "postgresql":
        return await store.execute(sql.replace("?", "%s"), params)  # type: ignore[attr-defined, no-any-return]
    return store.execute(sql, params)  # type: ignore[attr-defined, no-any-return]


async def plant_journal_row(
    store: Store, stream_id: str, stream_version: int, event_type: str, schema_version: int, payload: bytes
) -> str:
    """Insert one journal row as some other (older or foreign) writer would have; return its event id."""
    aggregate_type, _, aggregate_id = stream_id.partition(":")
    event_id = new_id()
    occurred_at = utc_now()
    envelope = Envelope(
        event_id=event_id,
        event_type=event_type,
        schema_version=schema_version,
        occurred_at=occurred_at,
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        aggregate_version=stream_version,
        correlation_id=event_id,
        source="legacy",
    )
    await execute_sql(
        store,
        "INSERT INTO tidings_journal (stream_id, stream_version, event_id, event_type, schema_version, "
        "occurred_at, correlation_id, envelope, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            stream_id,
            stream_version,
            event_id,
            event_type,
            schema_version,
            occurred_at.isoformat(),
            event_id,
            msgspec.json.encode(envelope).decode(),
            payload.decode(),
        ),
    )
    return event_id
