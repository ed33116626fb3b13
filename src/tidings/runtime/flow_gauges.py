"""What waits in the store, as OpenTelemetry observable gauges: outbox backlog and age, dead letters, projection lag.

The state of the flow lives in the store, so :class:`FlowGauges` reads it with the queries
``tidings outbox status``, ``tidings dead-letters`` and ``tidings projections status`` use, on
its own schedule (``refresh``/``run``), and its gauges report the last reading: a metrics
collection never waits on the database, and no hot path does any of this work.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from tidings.messaging.envelope import utc_now
from tidings.runtime.dead_letters import DeadLetters
from tidings.runtime.projector import Projector
from tidings.store.base import Store
from tidings.store.outbox import Outbox
from tidings.telemetry import semconv as sc

__all__ = ["FlowGauges"]

#: Dead-letter statuses that count as depth: dead, held behind a dead one, waiting for a replay.
_DEPTH_STATUSES = frozenset({"dead", "held", "replay_requested"})


@dataclass
class _Reading:
    backlog: dict[int, int] = field(default_factory=dict)
    parked: dict[int, int] = field(default_factory=dict)
    oldest_age: dict[int, float] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    projection_lag_s: dict[str, float] = field(default_factory=dict)
    projection_lag_events: dict[str, int] = field(default_factory=dict)


class FlowGauges:
    """Observable gauges of what waits in the store: outbox backlog and age per partition, dead letters, projection lag.

    ``refresh()`` reads the store (a few aggregate queries); ``run(stop)`` refreshes every
    ``interval`` seconds. Without a ``projector`` there is no projection lag gauge reading.
    """

    def __init__(self, store: Store, *, projector: Projector | None = None, meter_provider: MeterProvider | None = None) -> None:
        self.store = store
        self.projector = projector
        self.reading = _Reading()
        meter = (meter_provider or metrics.get_meter_provider()).get_meter("tidings")
        gauge = meter.create_observable_gauge
        gauge("tidings.outbox.backlog", [self._partitions("backlog")], unit="{message}",
              description="Outbox rows not yet delivered and not parked, per partition")
        gauge("tidings.outbox.parked", [self._partitions("parked")], unit="{message}",
              description="Outbox rows parked after failing for good, per partition")
        gauge("tidings.outbox.oldest_undelivered.age", [self._partitions("oldest_age")], unit="s",
              description="Age of the oldest undelivered outbox row (parked included), per partition")
        gauge("tidings.consumer.dead_letters", [self._dead_letters], unit="{message}",
              description="Dead letters of each consumer: dead, held behind one, or waiting for a replay")
        gauge("tidings.projection.lag", [self._projections("projection_lag_s")], unit="s",
              description="Age of the oldest journal event a projection has not applied")
        gauge("tidings.projection.lag.events", [self._projections("projection_lag_events")], unit="{event}",
              description="Journal events a projection has not applied")

    async def refresh(self) -> None:
        """Read the flow's state from the store; the gauges report it until the next refresh."""
        from tidings.runtime.dead_letters import DeadLetters
        from tidings.store.outbox import Outbox

        from tidings.messaging.envelope import utc_now

        now = utc_now()
        status = await Outbox(self.store).status(now)
        now_reading = _Reading()
        for p in status.partitions:
            now_reading.backlog[p.partition] = p.backlog - p.parked
            now_reading.parked[p.partition] = p.parked
            if p.oldest_at is not None:
                now_reading.oldest_age[p.partition] = max(0.0, (now - p.oldest_at).total_seconds())
        for (consumer, state), n in (await DeadLetters(self.store).counts()).items():
            if state in _DEPTH_STATUSES:
                now_reading.dead_letters[consumer] = now_reading.dead_letters.get(consumer, 0) + n
        if self.projector is not None:
            for projection in await self.projector.status():
                now_reading.projection_lag_s[projection.name] = projection.lag_seconds
                now_reading.projection_lag_events[projection.name] = projection.lag_events
        self.reading = now_reading

    async def run(self, stop: asyncio.Event, interval: float = 15.0) -> None:
        """Refresh every ``interval`` seconds until ``stop`` is set."""
        while not stop.is_set():
            await self.refresh()
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass

    def _partitions(self, what: str) -> Any:
        def observe(_: CallbackOptions) -> list[Observation]:
            values: dict[int, float] = getattr(self.reading, what)
            return [Observation(v, {sc.TIDINGS_PARTITION: p}) for p, v in values.items()]

        return observe

    def _dead_letters(self, _: CallbackOptions) -> list[Observation]:
        return [Observation(n, {sc.MESSAGING_CONSUMER_GROUP_NAME: c}) for c, n in self.reading.dead_letters.items()]

    def _projections(self, what: str) -> Any:
        def observe(_: CallbackOptions) -> list[Observation]:
            values: dict[str, float] = getattr(self.reading, what)
            return [Observation(v, {sc.TIDINGS_PROJECTION: name}) for name, v in values.items()]

        return observe
