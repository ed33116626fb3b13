"""The relay: claims outbox rows of its partitions, publishes them, marks them delivered.

See docs/decisions/0006 for why a batch goes out in rounds of one message per key. Broker
failures come in two kinds. When the broker itself is down (every publish of a round failed as
unavailable), no row is blamed: the relay backs off as a whole and says so once. When single
rows fail while others pass, those rows are retried with their own backoff, and parked after
``max_attempts`` or at once when the broker rejects them for good; their keys wait, the others
flow. Database failures are judged by ``tidings.store.errors``: unreachable or busy, the relay
waits and tries again; refused for good (a missing table, no privilege), it stops with a
PermanentDatabaseError that says what to do.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from tidings.messaging.partitioning import DEFAULT_PARTITIONS
from tidings.brokers.base import Broker, BrokerUnavailable, MessageRejected, OutgoingMessage
from tidings.brokers.headers import envelope_to_headers
from tidings.messaging.envelope import utc_now
from tidings.messaging.ids import new_id
from tidings.runtime.backoff import Backoff
from tidings.runtime.ownership import Ownership, ownership_for
from tidings.store.base import Store
from tidings.store.errors import PermanentDatabaseError, classify
from tidings.store.outbox import Outbox
from tidings.store.records import OutboxRow
from tidings.telemetry import tracing
from tidings.telemetry.metrics import Instruments, instruments
from tidings.telemetry.semconv import messaging_system_of

__all__ = ["Relay", "RelayRound"]

log = logging.getLogger("tidings.relay")


@dataclass(slots=True)
class RelayRound:
    """What one claim-and-publish pass did."""

    claimed: int = 0
    delivered: int = 0
    retried: int = 0
    parked: int = 0
    broker_down: BaseException | None = None
    delivered_ids: list[int] = field(default_factory=list)
    #: Rows to retry later ``(id, error, due)`` and rows to park ``(id, why)``, until settled.
    failures: list[tuple[int, str, object]] = field(default_factory=list, repr=False)
    parks: list[tuple[int, str]] = field(default_factory=list, repr=False)
    #: Keys of the rows that failed or were parked: their later rows must wait.
    stuck_keys: set[str] = field(default_factory=set, repr=False)

    def add(self, other: RelayRound) -> None:
        """Count ``other`` into this one (a pipelined pass sums its batches)."""
        self.claimed += other.claimed
        self.delivered += other.delivered
        self.retried += other.retried
        self.parked += other.parked
        self.broker_down = self.broker_down or other.broker_down


class Relay:
    """Delivers committed outbox rows to a broker: in order per key, pipelined across keys, at least once."""

    def __init__(
        self,
        store: Store,
        broker: Broker,
        *,
        batch_size: int = 500,
        max_attempts: int = 12,
        backoff: Backoff = Backoff(0.2, 60.0),
        idle_wait: float = 1.0,
        rebalance_interval: float = 1.0,
        retention: timedelta | None = timedelta(days=7),
        prune_interval: float = 60.0,
        partitions: int = DEFAULT_PARTITIONS,
        relay_id: str | None = None,
    ) -> None:
        self.store = store
        self.broker = broker
        self.outbox = Outbox(store)
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.idle_wait = idle_wait
        self.rebalance_interval = rebalance_interval
        self.retention = retention
        self.prune_interval = prune_interval
        self.relay_id = relay_id or f"{socket.gethostname()}-{os.getpid()}-{new_id()[-6:]}"
        self.ownership: Ownership = ownership_for(store, self.relay_id, partitions)
        self.owned: frozenset[int] = frozenset()
        self._state = "starting"
        #: True while the relay has nothing ready and waits for a commit (or its poll interval).
        self.waiting = False
        self._down_since = 0
        self._last_rebalance = 0.0
        self._last_prune = 0.0

    # -- the loop ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Relay until ``stop`` is set (or the task is cancelled); survives broker and database outages."""
        stop = stop or asyncio.Event()
        try:
            while not stop.is_set():
                try:
                    await self._maybe_rebalance()
                    if not self.owned:
                        await _sleep_or_stop(stop, self.rebalance_interval)
                        continue
                    result = await self._stream(stop)
                    if result.broker_down is not None:
                        self._down_since += 1
                        await _sleep_or_stop(stop, self.backoff.delay(self._down_since))
                        continue
                    await self._maybe_prune()
                    if not result.more:
                        await self._idle(stop, min(self.idle_wait, self.rebalance_interval))
                except Exception as exc:
                    kind = classify(exc)
                    if kind is None:
                        raise
                    if kind not in ("transient", "conflict"):
                        # A missing table, no privilege, a closed store: retrying would spin forever.
                        # (The relay's statements carry no user data, so "data" is as final here.)
                        stopped = PermanentDatabaseError(f"relay {self.relay_id}", exc)
                        log.error("%s", stopped)
                        self._state = "stopped"
                        raise stopped from exc
                    # The database went away (restart, network) or is busy: say it once, retry with backoff.
                    self._set_state("database unavailable", f"{type(exc).__name__}: {exc}", level=logging.WARNING)
                    self._down_since += 1
                    self.owned = frozenset()
                    await _sleep_or_stop(stop, self.backoff.delay(self._down_since))
        finally:
            try:
                await self.ownership.release()
            except Exception as exc:
                if classify(exc) is None:
                    raise
                # Its connection is closed all the same, and the partitions' locks go with it; the
                # error that stopped the relay (if any) is the one to report, not this one.
                log.warning("relay %s: could not deregister on the way out (%s: %s)", self.relay_id, type(exc).__name__, exc)
            self._set_state("stopped")

    async def drain(self, timeout: float = 30.0) -> None:
        """Publish until no ready row is left, then give the partitions back (TimeoutError after ``timeout`` s).

        Waits for ownership first: a drain that could not own any partition has drained nothing.
        """
        deadline = time.monotonic() + timeout
        try:
            while True:
                await self._maybe_rebalance(force=True)
                if not self.owned:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"relay {self.relay_id} could not own any partition within {timeout} s")
                    await asyncio.sleep(0.1)
                    continue
                result = await self._stream(None)
                if result.claimed == 0:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"relay {self.relay_id} did not drain the outbox within {timeout} s")
                if result.broker_down is not None:
                    await asyncio.sleep(0.2)
        finally:
            await self.ownership.release()
            self.owned = frozenset()

    async def publish_once(self) -> RelayRound:
        """Claim one batch from the owned partitions and publish it; mark, retry or park each row."""
        rows = await self.outbox.claim(sorted(self.owned), self.batch_size)
        result = await self._publish(rows)
        await self._settle(result)
        return result

    async def _stream(self, stop: asyncio.Event | None) -> _Pass:
        """Relay batch after batch while the backlog lasts, overlapping the database with the broker.

        While batch N is published, batch N+1 is claimed (ids after N's last) and batch N-1 is
        marked. Order per key still holds: N+1 is published only after all of N was confirmed,
        and a key whose row failed or was parked in a batch not yet settled is skipped in every
        later batch of this pass (the claim could not see the failure yet); its rows are claimed
        again, after the settle, by the next pass. A pass ends when a claim comes back short, the
        broker is down, ``stop`` is set, or it is time to rebalance the partitions.
        """
        total = _Pass()
        partitions = sorted(self.owned)
        ends_at = time.monotonic() + self.rebalance_interval
        stuck: set[str] = set()
        claim: asyncio.Future[list[OutboxRow]] | None = asyncio.ensure_future(
            self.outbox.claim(partitions, self.batch_size)
        )
        settle: asyncio.Future[None] | None = None
        try:
            while claim is not None:
                rows = await claim
                claim = None
                total.claimed += len(rows)
                if not rows:
                    break
                full = len(rows) == self.batch_size
                if full and time.monotonic() < ends_at and not (stop is not None and stop.is_set()):
                    claim = asyncio.ensure_future(self.outbox.claim(partitions, self.batch_size, after=rows[-1].id))
                if stuck:
                    rows = [row for row in rows if row.partition_key not in stuck]
                result = await self._publish(rows)
                if settle is not None:
                    await settle
                    settle = None
                settle = asyncio.ensure_future(self._settle(result))
                total.add(result)
                stuck |= result.stuck_keys
                total.more = full or bool(stuck)
                if result.broker_down is not None:
                    break
        finally:
            if claim is not None:
                claim.cancel()
                await asyncio.gather(claim, return_exceptions=True)
            if settle is not None:
                # Rows the broker confirmed are marked even when the pass is cancelled: otherwise
                # they would be published again (harmless for idempotent consumers, but wasteful).
                await asyncio.shield(settle)
        return total

    async def _publish(self, rows: Sequence[OutboxRow]) -> RelayRound:
        """Publish ``rows`` in rounds of one message per key; say what to mark, retry and park."""
        result = RelayRound(claimed=len(rows))
        if not rows:
            return result
        lanes: dict[str, list[OutboxRow]] = {}
        for row in rows:
            lanes.setdefault(row.partition_key, []).append(row)
        failures, parks = result.failures, result.parks
        active = list(lanes.values())
        depth = 0
        # Once per batch; without an SDK there is no span or metric work at all.
        traced, meters = tracing.tracing_enabled(), instruments()
        while active:
            batch = [lane[depth] for lane in active]
            sendable, outcome = self._check_sizes(batch, parks)
            results = (await self._send([_outgoing(row) for row in sendable], traced, meters)) if sendable else []
            outcome.update(zip((row.id for row in sendable), results, strict=True))
            if sendable and all(isinstance(r, BrokerUnavailable) for r in results) and not result.delivered_ids:
                # Nothing got through: the broker is down. Blame no row; back off as a whole.
                result.broker_down = results[0]
                result.stuck_keys.update(lanes)
                break
            still = []
            for lane, row in zip(active, batch, strict=True):
                error = outcome[row.id]
                if error is None:
                    result.delivered_ids.append(row.id)
                    if depth + 1 < len(lane):
                        still.append(lane)
                    continue
                result.stuck_keys.add(row.partition_key)
                if error is _PARKED:
                    continue
                if isinstance(error, MessageRejected) or row.attempts + 1 >= self.max_attempts:
                    why = "rejected by the broker" if isinstance(error, MessageRejected) else f"gave up after {row.attempts + 1} attempts"
                    parks.append((row.id, f"{why}: {error}"))
                else:
                    delay = self.backoff.delay(row.attempts + 1)
                    failures.append((row.id, f"{type(error).__name__}: {error}", utc_now() + timedelta(seconds=delay)))
            active = still
            depth += 1
        result.delivered = len(result.delivered_ids)
        result.retried = len(failures)
        result.parked = len(parks)
        return result

    async def _send(self, messages: list[OutgoingMessage], traced: bool, meters: Instruments | None) -> list[BaseException | None]:
        """Publish ``messages``; when tracing, inside a send span linked to each message's create span."""
        if not traced:
            results = await self.broker.publish(messages)
        else:
            with tracing.send_span(messaging_system_of(self.broker), messages) as span:
                results = await self.broker.publish(messages)
                tracing.mark_failures(span, results)
        if meters is not None:
            meters.count_sent(messaging_system_of(self.broker), messages, results)
        return results

    async def _settle(self, result: RelayRound) -> None:
        """Write what ``_publish`` found out: delivered, failed (with the next attempt), parked."""
        await self.outbox.mark_delivered(result.delivered_ids)
        if result.failures:
            await self.outbox.mark_failed(result.failures)  # type: ignore[arg-type]
        if result.parks:
            await self.outbox.park(result.parks)
            for row_id, why in result.parks:
                log.error("relay %s: parked outbox row %s: %s", self.relay_id, row_id, why)
        if result.broker_down is not None and not result.delivered:
            self._set_state("broker down", f"{result.broker_down}; backing off", level=logging.WARNING)
        elif result.delivered:
            self._down_since = 0
            self._set_state("relaying")

    # -- helpers -------------------------------------------------------------------------------

    def _check_sizes(self, batch: Sequence[OutboxRow], parks: list[tuple[int, str]]) -> tuple[list[OutboxRow], dict[int, object]]:
        """Rows small enough for the broker; the others are parked without a doomed publish."""
        sendable, outcome = [], {}
        limit = self.broker.max_message_bytes
        for row in batch:
            if len(row.payload) > limit:
                parks.append((row.id, f"payload is {len(row.payload)} bytes, over the broker's limit of {limit}"))
                outcome[row.id] = _PARKED
            else:
                sendable.append(row)
        return sendable, outcome

    async def _maybe_rebalance(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_rebalance >= self.rebalance_interval:
            owned = await self.ownership.rebalance()
            if owned != self.owned:
                log.info("relay %s: owns %d partition(s) %s", self.relay_id, len(owned), _ranges(owned))
            self.owned = owned
            self._last_rebalance = now

    async def _maybe_prune(self) -> None:
        if self.retention is None or 0 not in self.owned:
            return  # one relay (the owner of partition 0) prunes for everyone
        now = time.monotonic()
        if now - self._last_prune >= self.prune_interval:
            self._last_prune = now
            pruned = await self.outbox.prune(self.retention)
            if pruned:
                log.info("relay %s: pruned %d delivered row(s) older than %s", self.relay_id, pruned, self.retention)

    async def _idle(self, stop: asyncio.Event, seconds: float) -> None:
        """Wait for a commit that wrote outbox rows, for ``stop``, or for ``seconds``, whichever is first."""
        self.waiting = True
        waiters = {
            asyncio.ensure_future(self.ownership.wait_for_outbox(seconds, self._ready)),
            asyncio.ensure_future(stop.wait()),
        }
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.waiting = False
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def _ready(self) -> bool:
        """Whether a row of the owned partitions is ready to publish now."""
        return bool(self.owned) and bool(await self.outbox.claim(sorted(self.owned), 1))

    def _set_state(self, state: str, detail: str = "", level: int = logging.INFO) -> None:
        # State changes are logged once each, never per row.
        if state != self._state:
            if self._state in {"broker down", "database unavailable"} and state == "relaying":
                log.info("relay %s: recovered (%s ended)", self.relay_id, self._state)
            else:
                log.log(level, "relay %s: %s%s", self.relay_id, state, f" — {detail}" if detail else "")
            self._state = state


_PARKED = object()


@dataclass(slots=True)
class _Pass(RelayRound):
    """A pipelined pass over the backlog: the sum of its batches, and whether rows are left."""

    more: bool = False


def _outgoing(row: OutboxRow) -> OutgoingMessage:
    return OutgoingMessage(
        topic=row.topic,
        key=row.partition_key,
        partition=row.partition,
        event_id=row.event_id,
        headers=envelope_to_headers(row.envelope),
        payload=row.payload,
        replay=row.replays,
    )


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


def _ranges(partitions: frozenset[int]) -> str:
    if not partitions:
        return "(none)"
    ordered = sorted(partitions)
    spans, start, prev = [], ordered[0], ordered[0]
    for p in ordered[1:]:
        if p != prev + 1:
            spans.append(f"{start}-{prev}" if start != prev else str(start))
            start = p
        prev = p
    spans.append(f"{start}-{prev}" if start != prev else str(start))
    return ",".join(spans)
