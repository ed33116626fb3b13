"""The write benchmarks' shared workload: licenses that report usage, in either persistence style.

One command (`ReportUsage`) loads a License, records one `UsageReported` and, with translation
on, turns it into one `LicenseUsageReported` integration event for the outbox. The same domain
runs state-stored (row + version) and event-sourced (stream), so both styles are measured on
identical business logic, and the raw SQL contenders build rows of the same shape and size.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from tidings.app import Application, UnitOfWork
from tidings.domain import Command, DomainEvent, EventSourcedAggregate, Personal, StateStoredAggregate, applies
from tidings.messaging import Envelope, IntegrationEvent, new_id
from tidings.store import Store

__all__ = [
    "Persistence",
    "LicenseOffered",
    "UsageReported",
    "LicenseUsageReported",
    "OfferLicense",
    "ReportUsage",
    "StoredLicense",
    "SourcedLicense",
    "Workload",
    "Driven",
    "license_ids",
    "command_plan",
    "offer_command",
    "usage_command",
    "drive",
    "latency_summary",
]

Persistence = Literal["state", "events"]

#: Values that give the payloads a realistic size (a few hundred bytes of JSON per row).
CHANNELS = ("web", "print", "broadcast", "social", "newsletter")


class LicenseOffered(DomainEvent, name="licensing.LicenseOffered"):
    """A license for one asset was offered to one buyer."""

    asset_id: str
    buyer_id: str
    allowance: int
    price_cents: int
    currency: str


class UsageReported(DomainEvent, name="licensing.UsageReported"):
    """The buyer reported using the licensed asset `units` times through a channel."""

    units: int
    channel: str
    reported_by: str
    used_total: int


class LicenseUsageReported(IntegrationEvent, name="licensing.LicenseUsageReported", version=1):
    """Public contract: usage of a license was reported (what analytics and compliance consume)."""

    license_id: str
    units: int
    used_total: int
    channel: str
    reported_by: str


class OfferLicense(Command, name="licensing.OfferLicense"):
    """Create a license (used to pre-create the benchmark's aggregates)."""

    license_id: str
    asset_id: str
    buyer_id: str
    allowance: int
    price_cents: int
    currency: str = "EUR"


class ReportUsage(Command, name="licensing.ReportUsage"):
    """The measured command: report usage of an existing license."""

    license_id: str
    units: int
    channel: str
    reported_by: str


class _LicenseRules:
    """The license's state and rules, shared by both persistence styles."""

    asset_id: str = ""
    buyer_id: str = ""
    allowance: int = 0
    used: int = 0
    price_cents: int = 0
    currency: str = "EUR"

    def offer(self, command: OfferLicense) -> None:
        """Record that the license was offered."""
        self.record(  # type: ignore[attr-defined]
            LicenseOffered(
                asset_id=command.asset_id,
                buyer_id=command.buyer_id,
                allowance=command.allowance,
                price_cents=command.price_cents,
                currency=command.currency,
            )
        )

    def report_usage(self, units: int, channel: str, reported_by: str) -> None:
        """Record one usage report, carrying the running total so consumers need no state."""
        self.record(  # type: ignore[attr-defined]
            UsageReported(units=units, channel=channel, reported_by=reported_by, used_total=self.used + units)
        )

    @applies
    def _offered(self, event: LicenseOffered) -> None:
        self.asset_id = event.asset_id
        self.buyer_id = event.buyer_id
        self.allowance = event.allowance
        self.price_cents = event.price_cents
        self.currency = event.currency

    @applies
    def _usage_reported(self, event: UsageReported) -> None:
        self.used = event.used_total


class StoredLicense(_LicenseRules, StateStoredAggregate, name="License"):
    """The license saved as one state row plus its journal entries."""


class SourcedLicense(_LicenseRules, EventSourcedAggregate, name="License"):
    """The license rebuilt from its own stream of events."""


# -- the same workload with personal data (`--personal`): the reporter and the buyer are sealed ----

Reporter = Annotated[str, Personal(subject="reported_by")]


class PersonalUsageReported(DomainEvent, name="licensing.UsageReported"):
    """UsageReported with the reporting person sealed under their own key."""

    units: int
    channel: str
    reported_by: Reporter
    used_total: int


class PersonalLicenseUsageReported(IntegrationEvent, name="licensing.LicenseUsageReported", version=1):
    """LicenseUsageReported with the reporting person sealed under their own key."""

    license_id: str
    units: int
    used_total: int
    channel: str
    reported_by: Reporter


class _PersonalRules(_LicenseRules):
    buyer_id: Annotated[str, Personal(subject="buyer_id")] = ""

    def report_usage(self, units: int, channel: str, reported_by: str) -> None:
        """Record one usage report whose reporter is personal data."""
        self.record(  # type: ignore[attr-defined]
            PersonalUsageReported(units=units, channel=channel, reported_by=reported_by, used_total=self.used + units)
        )

    @applies
    def _usage_reported(self, event: PersonalUsageReported) -> None:  # type: ignore[override]
        self.used = event.used_total


class PersonalStoredLicense(_PersonalRules, StateStoredAggregate, name="License"):
    """StoredLicense whose buyer is sealed in its state row."""


class PersonalSourcedLicense(_PersonalRules, EventSourcedAggregate, name="License"):
    """SourcedLicense with sealed reporters in its stream."""


@dataclass
class Workload:
    """An Application wired for the workload, counting handler runs so conflicts can be reported."""

    app: Application
    license_type: type[StoredLicense] | type[SourcedLicense]
    handler_runs: int = 0

    async def offer(self, command: OfferLicense) -> None:
        """Create one license through the application."""
        await self.app.handle(command)

    async def report(self, command: ReportUsage, retries: int) -> None:
        """Handle one usage report, retrying on a concurrency conflict."""
        await self.app.handle(command, retries=retries)

    @classmethod
    def build(cls, store: Store, persistence: Persistence, *, translate: bool = True, personal: bool = False) -> Workload:
        """An Application with the license handlers, and (if `translate`) the usage translator.

        ``personal``: the reporter (events, contract) and the buyer (state) are personal data,
        sealed per subject — what crypto-shredding costs on the write path.
        """
        app = Application(store, name="licensing")
        license_type: type[StoredLicense] | type[SourcedLicense] = (
            StoredLicense if persistence == "state" else SourcedLicense
        )
        if personal:
            license_type = PersonalStoredLicense if persistence == "state" else PersonalSourcedLicense  # type: ignore[assignment]
        usage_event: type[Any] = PersonalUsageReported if personal else UsageReported
        contract: type[Any] = PersonalLicenseUsageReported if personal else LicenseUsageReported
        workload = cls(app, license_type)

        @app.command_handler(OfferLicense)
        def offer(command: OfferLicense, uow: UnitOfWork) -> Any:
            license_ = license_type(command.license_id)
            license_.offer(command)
            return license_

        @app.command_handler(ReportUsage)
        async def report(command: ReportUsage, uow: UnitOfWork) -> None:
            # Every attempt runs the handler once, so runs minus commands = conflicts retried.
            workload.handler_runs += 1
            license_ = await uow.get(license_type, command.license_id)
            license_.report_usage(command.units, command.channel, command.reported_by)

        if translate:

            @app.translator(usage_event)
            def usage_to_contract(event: UsageReported, envelope: Envelope) -> LicenseUsageReported:
                assert envelope.aggregate_id is not None
                return contract(  # type: ignore[no-any-return]
                    license_id=envelope.aggregate_id,
                    units=event.units,
                    used_total=event.used_total,
                    channel=event.channel,
                    reported_by=event.reported_by,
                )

        return workload


def license_ids(count: int) -> list[str]:
    """`count` fresh license ids (UUIDv7 strings, which the eventsourcing library accepts too)."""
    return [new_id() for _ in range(count)]


def offer_command(license_id: str, n: int) -> OfferLicense:
    """The command that creates license number `n`."""
    return OfferLicense(
        license_id=license_id,
        asset_id=f"asset-{n:08d}",
        buyer_id=f"buyer-{n % 97:05d}",
        allowance=1_000_000,
        price_cents=4_900 + n % 100,
    )


def usage_command(license_id: str, n: int) -> ReportUsage:
    """The `n`-th measured command, on `license_id`."""
    return ReportUsage(
        license_id=license_id,
        units=1 + n % 5,
        channel=CHANNELS[n % len(CHANNELS)],
        reported_by=f"partner-feed-{n % 13:02d}",
    )


def command_plan(aggregates: int, commands: int, seed: int = 7) -> list[int]:
    """Which aggregate each command targets: uniform at random, the same sequence for every contender."""
    rng = random.Random(seed)
    return [rng.randrange(aggregates) for _ in range(commands)]


@dataclass
class Driven:
    """What running a batch of commands took: wall time and per-command latencies."""

    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def add(self, other: Driven) -> None:
        """Accumulate another batch."""
        self.seconds += other.seconds
        self.latencies.extend(other.latencies)

    @property
    def rate(self) -> float:
        """Commands per second over all batches."""
        return len(self.latencies) / self.seconds if self.seconds else 0.0


async def drive(
    op: Callable[[int], Awaitable[object]],
    jobs: Sequence[int],
    concurrency: int,
    advance: Callable[[int], None] | None = None,
) -> Driven:
    """Run `op(job)` for every job with `concurrency` workers pulling from one queue; time each call."""
    latencies: list[float] = []
    next_job = iter(jobs)
    clock = time.perf_counter

    async def worker() -> None:
        done = 0
        for job in next_job:  # a shared iterator: each job is taken by exactly one worker
            start = clock()
            await op(job)
            latencies.append(clock() - start)
            done += 1
            if advance is not None and done % 100 == 0:
                advance(100)
        if advance is not None:
            advance(done % 100)

    start = clock()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Driven(clock() - start, latencies)


def latency_summary(latencies: Sequence[float]) -> dict[str, float]:
    """p50 and p99 in milliseconds."""
    if len(latencies) < 2:
        return {"p50_ms": 0.0, "p99_ms": 0.0}
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50_ms": round(cuts[49] * 1000, 3), "p99_ms": round(cuts[98] * 1000, 3)}
