"""The projector: keeps projections up to date from the journal, and rebuilds them from history.

Each batch of events is one transaction: the projection's read-model writes and its checkpoint
commit together or not at all, so a crash or a failing handler never leaves a read model ahead
of (or behind) the position it claims. Batches are read with :class:`JournalReader`, which never
passes a position that a transaction still in flight may fill (docs/decisions/0009).

A rebuild runs the same handlers over the whole journal into ``<table>__rebuild`` tables, then in
one transaction drops the live tables, renames the new ones in and sets the checkpoint to where
the rebuild stopped; the projection then catches up from there. Readers see the old complete
model until that commit and the new complete model after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from tidings.domain.errors import TidingsError
from tidings.messaging.envelope import Envelope, utc_now
from tidings.messaging.ids import new_id
from tidings.messaging.personal import is_sealed, scrubbed
from tidings.runtime.backoff import Backoff
from tidings.runtime.journal_reader import JournalBatch, JournalReader, JournalRow, first_after, journal_head
from tidings.runtime.projection import REBUILD_SUFFIX, Projection, Target, _current, _Handler, _Session
from tidings.store.base import Store
from tidings.store.errors import PermanentDatabaseError, is_permanent, is_transient
from tidings.store.names import quoted
from tidings.store.subject_keys import SubjectKeys
from tidings.telemetry import tracing

__all__ = ["Projector", "ProjectionFailed", "ProjectionStatus", "RebuildProgress", "RebuildResult"]

log = logging.getLogger("tidings.projector")

_envelope_decoder = msgspec.json.Decoder(Envelope)
# Identifies this projector's advisory locks (first key); the second is derived from the name.
_LOCK_NAMESPACE = 0x7470  # "tp"


class ProjectionFailed(TidingsError):
    """A projection's handler or write failed on one event; the projection waits at the event before it."""

    def __init__(self, projection: str, position: int, event_type: str, cause: BaseException) -> None:
        self.projection = projection
        self.position = position
        self.event_type = event_type
        self.cause = cause
        super().__init__(
            f"projection {projection} failed on journal position {position} ({event_type}): "
            f"{type(cause).__name__}: {cause} — its read model and checkpoint stay just before this event; "
            "fix the handler (or the data) and it resumes here, or rebuild it"
        )


class _CheckpointMoved(Exception):
    """Someone else (another projector, a rebuild's swap) moved the checkpoint since this batch was read."""

    def __init__(self, actual: int | None) -> None:
        self.actual = actual


@dataclass(frozen=True, slots=True)
class ProjectionStatus:
    """Where one projection stands: its position against the journal's head, and its health."""

    name: str
    position: int
    head: int
    #: Journal positions between the checkpoint and the head (every event not applied yet).
    lag_events: int
    #: Age of the oldest event not applied yet (0 when caught up).
    lag_seconds: float
    #: "live", "rebuilding 42%", "failed", "schema changed", or "not installed".
    state: str
    tables: tuple[str, ...]
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class RebuildProgress:
    """How far a rebuild has read: ``position`` of ``head`` (both journal positions), ``events`` applied."""

    position: int
    head: int
    events: int


@dataclass(frozen=True, slots=True)
class RebuildResult:
    """What one rebuild did."""

    name: str
    events: int
    position: int
    seconds: float


class _Run:
    """One projection being applied to one set of tables from one checkpoint."""

    def __init__(self, projection: Projection, target: Target, reader: JournalReader, position: int) -> None:
        self.projection = projection
        self.target = target
        self.reader = reader
        self.position = position
        self.checkpoint = _checkpoint_name(projection.name, target)
        self.handlers = projection.handler_table()
        self.failed = False


@dataclass(slots=True)
class _Prepared:
    """A batch decoded and (for plain handlers) already turned into queued writes."""

    batch: JournalBatch
    session: _Session
    events: list[tuple[_Handler, Envelope, Any, JournalRow]]
    #: When tracing: the trace contexts of the batch's events (the commands that recorded them).
    traceparents: list[str] | None = None


class Projector:
    """Runs projections from the journal of its store: catch up, follow new commits, rebuild, report status."""

    def __init__(
        self,
        store: Store,
        projections: Iterable[Projection | type[Projection]],
        *,
        batch_size: int = 1000,
        rebuild_batch_size: int = 5000,
        idle_wait: float = 0.2,
        backoff: Backoff = Backoff(0.2, 30.0),
    ) -> None:
        self.store = store
        self.projections: dict[str, Projection] = {}
        for projection in projections:
            instance = projection() if isinstance(projection, type) else projection
            if instance.name in self.projections:
                raise ValueError(f"two projections are named {instance.name!r}; give one of them name=...")
            self.projections[instance.name] = instance
        _check_table_names(self.projections.values())
        self.batch_size = batch_size
        self.rebuild_batch_size = rebuild_batch_size
        self.idle_wait = idle_wait
        self.backoff = backoff
        self._runs: dict[str, _Run] = {}
        self._following: set[str] = set()
        self._prepared: set[str] = set()
        self._wake = asyncio.Event()

    def __getitem__(self, name: str) -> Projection:
        try:
            return self.projections[name]
        except KeyError:
            raise KeyError(f"no projection named {name!r}; known: {', '.join(sorted(self.projections)) or '(none)'}") from None

    # -- setup ---------------------------------------------------------------------------------

    async def prepare(self, name: str | None = None) -> None:
        """Create the live tables, checkpoint and bookkeeping row of one projection (or all) if missing; idempotent."""
        for projection in [self[name]] if name is not None else self.projections.values():
            if projection.name not in self._prepared:
                await _prepare(self.store, projection)
                self._prepared.add(projection.name)

    async def _live(self, name: str) -> _Run:
        run = self._runs.get(name)
        if run is None:
            await self.prepare(name)
            projection = self[name]
            reader = JournalReader(self.store, event_types=projection.event_types, batch_size=self.batch_size)
            run = self._runs[name] = _Run(projection, "live", reader, await _read_checkpoint(self.store, name, "live"))
            failed = await self.store.fetch("SELECT last_error FROM tidings_projections WHERE name = ?", (name,))
            run.failed = bool(failed and failed[0][0])  # cleared by the next batch that applies
        return run

    # -- following the journal -----------------------------------------------------------------

    async def catch_up(self, name: str | None = None) -> dict[str, int]:
        """Apply every committed event up to the journal's head (or up to a hole still in flight).

        Returns each projection's position afterwards. Raises :class:`ProjectionFailed` if an
        event cannot be applied.
        """
        names = [name] if name is not None else list(self.projections)
        positions = {}
        for each in names:
            run = await self._live(each)
            await self._drain(run)
            positions[each] = run.position
        return positions

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Follow the journal until ``stop`` is set: every projection in its own task, woken on commits."""
        stop = stop or asyncio.Event()
        await self.prepare()
        self._following.update(self.projections)
        tasks = [asyncio.create_task(self._follow(name, stop), name=f"projection {name}") for name in self.projections]
        listener = asyncio.create_task(self._listen(stop), name="projector wake-up")
        stopping = asyncio.create_task(stop.wait())
        try:
            # A projection's task ends early only when the database refused its work for good.
            await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                error = task.exception() if task.done() and not task.cancelled() else None
                if error is not None:
                    raise error
        finally:
            stopping.cancel()
            for task in (*tasks, listener):
                task.cancel()
            await asyncio.gather(*tasks, listener, return_exceptions=True)
            self._following.clear()

    async def _follow(self, name: str, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                run = await self._live(name)
                batch = await self._drain(run)
                failures = 0
            except ProjectionFailed as exc:
                failures += 1
                log.error("%s (attempt %d)", exc, failures)
                await _sleep_or_stop(stop, self.backoff.delay(failures))
                continue
            except Exception as exc:
                failures += 1
                if is_transient(exc):
                    log.warning("projection %s: database unavailable (%s); retrying", name, exc)
                elif is_permanent(exc):
                    # A missing table, no privilege, a closed store: retrying would never end.
                    stopped = PermanentDatabaseError(f"projection {name}", exc)
                    log.error("%s", stopped)
                    raise stopped from exc
                else:
                    # A bug, not bad data: keep it in this projection's task; the others go on.
                    log.exception("projection %s: unexpected error; retrying", name)
                self._runs.pop(name, None)
                await _sleep_or_stop(stop, self.backoff.delay(failures))
                continue
            if batch.more:
                continue
            if batch.waiting:
                # A transaction that allocated the next position is still in flight: look again soon.
                await _sleep_or_stop(stop, 0.02)
                continue
            await self._idle(stop)

    async def _idle(self, stop: asyncio.Event) -> None:
        waiters = {asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())}
        try:
            await asyncio.wait(waiters, timeout=self.idle_wait, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _listen(self, stop: asyncio.Event) -> None:
        """On PostgreSQL, wake the followers when a commit wrote outbox rows (the notification that exists).

        Journal commits without outbox rows are found by polling every ``idle_wait``: a
        notification per journal commit would serialise every commit of the database (NOTIFY
        takes a global lock until commit; docs/decisions/0009 has the figures).
        """
        if self.store.dialect != "postgresql":
            return
        failures = 0
        while not stop.is_set():
            conn = None
            try:
                conn = await self.store.dedicated_connection()  # type: ignore[attr-defined]
                await conn.execute("LISTEN tidings_outbox")
                failures = 0
                async for _ in conn.notifies():
                    self._wake.set()
                    self._wake.clear()  # waiters already woken stay woken
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.debug("projector: wake-up listener lost (%s); polling meanwhile", exc)
                await _sleep_or_stop(stop, self.backoff.delay(failures))
            finally:
                if conn is not None:
                    await conn.close()

    # -- batches -------------------------------------------------------------------------------

    async def _drain(self, run: _Run, on_commit: Callable[[JournalBatch], None] | None = None) -> JournalBatch:
        """Apply batches until the reader has nothing more for now; the last batch read.

        While one batch commits (in a task of its own, on the connection its transaction pins),
        the next is read (on another pooled connection), decoded and handled: on PostgreSQL the
        server upserts while the projector decodes. The next batch is only committed if the
        checkpoint is still where it was read from.
        """
        pending: tuple[asyncio.Task[None], JournalBatch] | None = None
        reading: asyncio.Task[JournalBatch] | None = asyncio.create_task(run.reader.read(run.position))
        batch = JournalBatch(after=run.position, upto=run.position)
        try:
            while True:
                if reading is None:
                    if pending is None:
                        break
                    task, committing = pending
                    pending = None
                    if not await self._settle(run, task, committing, on_commit):
                        reading = await _restart(None, run)
                    continue
                batch = await reading
                # Read the next batch while this one is prepared and the last one commits.
                reading = asyncio.create_task(run.reader.read(batch.upto)) if batch.more else None
                prepared: _Prepared | _EventFailed | None = None
                if batch.upto > batch.after:
                    try:
                        prepared = await self._prepare(run, batch)
                    except _EventFailed as failed:
                        prepared = failed
                if pending is not None:
                    task, committing = pending
                    pending = None
                    if not await self._settle(run, task, committing, on_commit):
                        reading = await _restart(reading, run)  # the checkpoint is elsewhere: read from there
                        continue
                if isinstance(prepared, _EventFailed):
                    if not await self._isolate(run, batch, prepared):
                        reading = await _restart(reading, run)
                        continue
                    if on_commit is not None:
                        on_commit(batch)
                elif prepared is not None:
                    pending = (asyncio.create_task(self._commit(run, prepared)), batch)
        finally:
            for leftover in (pending[0] if pending is not None else None, reading):
                if leftover is not None and not leftover.done():
                    leftover.cancel()
                    with contextlib.suppress(BaseException):
                        await leftover
        return batch

    async def _settle(
        self, run: _Run, task: asyncio.Task[None], batch: JournalBatch, on_commit: Callable[[JournalBatch], None] | None
    ) -> bool:
        """Wait for a batch's commit; False if the checkpoint had moved elsewhere (nothing was applied)."""
        try:
            await task
        except _CheckpointMoved as moved:
            self._moved(run, moved)
            return False
        except Exception as exc:
            if is_transient(exc):  # the database, not this batch: the projection's task waits and retries
                raise
            if not await self._isolate(run, batch, exc):
                return False
        if run.failed:
            run.failed = False
            await self.store.run(
                "UPDATE tidings_projections SET failed_position = NULL, failed_at = NULL, last_error = NULL WHERE name = ?",
                (run.projection.name,),
            )
        if on_commit is not None:
            on_commit(batch)
        return True

    async def _prepare(self, run: _Run, batch: JournalBatch) -> _Prepared:
        """Decode a batch and, unless a handler is async, run the handlers (they only queue writes)."""
        projection = run.projection
        session, token = projection._open(run.target)
        events = []
        # Checked once per batch; without an SDK no trace context is collected.
        traceparents: list[str] | None = [] if tracing.tracing_enabled() else None
        try:
            plain = not projection.needs_transaction
            handlers = run.handlers
            registry = projection.registry
            # Personal fields are opened with this batch's subject keys, fetched in one query; a
            # forgotten subject's fields read as their masks, so a rebuild forgets them too.
            keys = SubjectKeys(self.store)
            await keys.prepare_payloads(row.payload for row in batch.rows if row.event_type in handlers)
            for i, row in enumerate(batch.rows):
                # Decoding and calling inline: this loop runs once per event of every rebuild.
                handler = handlers[row.event_type]
                try:
                    envelope = _envelope_decoder.decode(row.envelope)
                    if row.schema_version == handler.event_type.message_version and not is_sealed(row.payload):
                        event = _decoder_for(handler.event_type).decode(row.payload)
                    else:
                        event = registry.decode(row.event_type, row.schema_version, row.payload, keys)  # upcast, open
                    if plain:
                        if handler.wants_envelope:
                            handler.function(projection, event, envelope)
                        else:
                            handler.function(projection, event)
                except Exception as exc:
                    raise _EventFailed(row, _explained(run, row, exc)) from exc
                if traceparents is not None and envelope.traceparent:
                    traceparents.append(envelope.traceparent)
                if not plain:
                    # Kept for the handlers to run in the transaction. (Plain handlers' events are
                    # dropped at once: thousands kept alive make every garbage collection slower.)
                    events.append((handler, envelope, event, row))
                if i % 500 == 499:
                    # Let a pending commit take its next round trip while this batch is prepared.
                    await asyncio.sleep(0)
        finally:
            projection._close(token)
        return _Prepared(batch, session, events, traceparents)

    async def _commit(self, run: _Run, prepared: _Prepared) -> None:
        """Write a prepared batch and move the checkpoint to its end, in one transaction."""
        if prepared.traceparents is None:
            async with self.store.transaction() as tx:
                await self._write(run, prepared, tx)
        else:
            with tracing.projection_batch_span(run.projection.name, len(prepared.batch.rows), prepared.traceparents):
                async with self.store.transaction() as tx:
                    await self._write(run, prepared, tx)
        run.position = prepared.batch.upto

    @staticmethod
    async def _write(run: _Run, prepared: _Prepared, tx: Any) -> None:
        session = prepared.session
        session.tx = tx
        await _claim_checkpoint(tx, run, prepared.batch.after)
        if run.projection.needs_transaction:
            token = _current.set(session)
            try:
                await _call_all_async(run, prepared.events)
            finally:
                _current.reset(token)
        await session.flush()
        await tx.run(
            "UPDATE tidings_checkpoints SET position = ?, updated_at = ? WHERE name = ?",
            (prepared.batch.upto, utc_now(), run.checkpoint),
        )

    async def _apply(self, run: _Run, batch: JournalBatch) -> None:
        """Apply one batch on its own (no overlap): used to find which event of a failed batch fails."""
        await self._commit(run, await self._prepare(run, batch))

    async def _isolate(self, run: _Run, batch: JournalBatch, exc: Exception) -> bool:
        """A batch failed: apply its events one per transaction, so those before the failing one land and it is named.

        Raises ProjectionFailed for the failing event; False if the checkpoint moved elsewhere meanwhile.
        """
        rows = batch.rows
        if isinstance(exc, _EventFailed):
            rows = rows[: rows.index(exc.row) + 1]  # the events after it wait behind it anyway
        for row in rows:
            if row.position <= run.position:
                continue
            try:
                await self._apply(run, JournalBatch([row], after=run.position, upto=row.position))
            except _CheckpointMoved as moved:
                self._moved(run, moved)
                return False
            except Exception as single:
                if is_transient(single):
                    raise
                await self._fail(run, row, single.cause if isinstance(single, _EventFailed) else single)
        if batch.upto > run.position:
            await self._apply(run, JournalBatch([], after=run.position, upto=batch.upto))
        if not isinstance(exc, _EventFailed):
            # Every event applied on its own, so the failure came from sending them together:
            # nothing is lost, but batching is not doing its job here — say so loudly.
            log.warning(
                "projection %s: a batch of %d events failed (%s: %s) but each applied on its own; "
                "the batched statements may not suit this handler's SQL",
                run.projection.name, len(batch.rows), type(exc).__name__, exc,
            )
        return True

    async def _fail(self, run: _Run, row: JournalRow, cause: BaseException) -> None:
        failure = ProjectionFailed(run.projection.name, row.position, row.event_type, cause)
        if is_sealed(row.payload):
            # A handler's error may quote the personal values it was given: they stay out of the
            # stored error and the log (the journal keeps them sealed; this copy would not be).
            keys = SubjectKeys(self.store)
            with contextlib.suppress(Exception):
                await keys.prepare_payloads([row.payload])
                failure.args = (scrubbed(str(failure), keys.values(row.payload)),)
        run.failed = True
        if run.target == "live":
            await self.store.run(
                "UPDATE tidings_projections SET failed_position = ?, failed_at = ?, last_error = ? WHERE name = ?",
                (row.position, utc_now(), str(failure), run.projection.name),
            )
        raise failure from cause

    def _moved(self, run: _Run, moved: _CheckpointMoved) -> None:
        if run.target == "rebuild":
            raise TidingsError(
                f"projection {run.projection.name}: another rebuild started while this one ran; this one stops "
                "(the live tables are untouched)"
            )
        log.info(
            "projection %s: checkpoint moved from %s to %s elsewhere (a rebuild's swap or another projector); following it",
            run.projection.name, run.position, moved.actual,
        )
        run.position = moved.actual or 0

    # -- rebuild -------------------------------------------------------------------------------

    async def rebuild(self, name: str, *, progress: Callable[[RebuildProgress], None] | None = None) -> RebuildResult:
        """Replay the whole journal into fresh tables, swap them in at once, then catch up.

        Readers see the old model until the swap commits, then the new one; neither is ever half
        built. The live projection may keep running meanwhile (here or in another process).
        """
        projection = self[name]
        await self.prepare(name)
        started = time.monotonic()
        token = new_id()
        await _start_rebuild(self.store, projection, token)
        reader = JournalReader(self.store, event_types=projection.event_types, batch_size=self.rebuild_batch_size)
        run = _Run(projection, "rebuild", reader, 0)
        head, _ = await journal_head(self.store)
        events = 0

        def committed(batch: JournalBatch) -> None:
            nonlocal events, head
            events += len(batch.rows)
            head = max(head, batch.upto)
            if progress is not None:
                progress(RebuildProgress(batch.upto, head, events))

        while True:
            batch = await self._drain(run, committed)
            if not batch.waiting:
                break
            await asyncio.sleep(0.01)  # a transaction in flight holds the next position
        await _swap(self.store, projection, token, run.position)
        projection._forget_table_types()
        if name in self._following:
            # The follower finds its checkpoint moved back to run.position and continues from there.
            self._wake.set()
            self._wake.clear()
        else:
            await self.catch_up(name)
        return RebuildResult(name, events, run.position, time.monotonic() - started)

    # -- status --------------------------------------------------------------------------------

    async def status(self) -> list[ProjectionStatus]:
        """Position, lag (events and seconds) and health of every projection, in name order."""
        head, _ = await journal_head(self.store)
        now = utc_now()
        out = []
        for name in sorted(self.projections):
            projection = self.projections[name]
            rows = await self.store.fetch(
                "SELECT fingerprint, rebuild_token, last_error FROM tidings_projections WHERE name = ?", (name,)
            )
            tables = tuple(projection.tables)
            fingerprint, rebuild_token, last_error = rows[0] if rows else (None, None, None)
            position = await _read_checkpoint(self.store, name, "live")
            first = await first_after(self.store, position)
            lag_seconds = max(0.0, (now - first[1]).total_seconds()) if first is not None else 0.0
            if not rows:
                state = "not installed"
            elif last_error:
                state = "failed"
            elif rebuild_token:
                rebuilt = await _read_checkpoint(self.store, name, "rebuild")
                state = f"rebuilding {100 * rebuilt // max(head, 1)}%"
            elif fingerprint != projection.fingerprint(self.store.dialect):
                state = "schema changed: rebuild"
            else:
                state = "live"
            out.append(
                ProjectionStatus(name, position, head, max(0, head - position), lag_seconds, state, tables, last_error)
            )
        return out


# -- decoding and calling handlers -------------------------------------------------------------


class _EventFailed(Exception):
    """A handler raised on one event of a batch (which one is kept, for the report)."""

    def __init__(self, row: JournalRow, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.row = row
        self.cause = cause


def _explained(run: _Run, row: JournalRow, exc: Exception) -> Exception:
    """For a payload that does not decode, the registry's error (it names the field); else ``exc``."""
    if isinstance(exc, (msgspec.ValidationError, msgspec.DecodeError)):
        try:
            run.projection.registry.decode(row.event_type, row.schema_version, row.payload)  # type: ignore[arg-type]
        except Exception as explained:
            return explained
    return exc


@functools.lru_cache(maxsize=1024)
def _decoder_for(message_type: type) -> msgspec.json.Decoder[Any]:
    """A payload decoder per class: what the registry does for a current version, minus its lookups."""
    return msgspec.json.Decoder(message_type)


async def _restart(reading: asyncio.Task[JournalBatch] | None, run: _Run) -> asyncio.Task[JournalBatch]:
    """Drop a read made from a position that turned out stale, and read from the run's position."""
    if reading is not None:
        reading.cancel()
        with contextlib.suppress(BaseException):
            await reading
    return asyncio.create_task(run.reader.read(run.position))


async def _call_all_async(run: _Run, events: list[tuple[_Handler, Envelope, Any, JournalRow]]) -> None:
    projection = run.projection
    for handler, envelope, event, row in events:
        try:
            result = handler.function(projection, event, envelope) if handler.wants_envelope else handler.function(projection, event)
            if handler.is_async:
                await result
        except Exception as exc:
            raise _EventFailed(row, exc) from exc


# -- the bookkeeping rows and the tables ---------------------------------------------------------


def _checkpoint_name(projection: str, target: Target) -> str:
    return f"projection:{projection}" if target == "live" else f"projection:{projection}:rebuild"


async def _read_checkpoint(store: Store, name: str, target: Target) -> int:
    rows = await store.fetch("SELECT position FROM tidings_checkpoints WHERE name = ?", (_checkpoint_name(name, target),))
    return int(rows[0][0]) if rows else 0


async def _claim_checkpoint(tx: Any, run: _Run, expected: int) -> None:
    """Lock the run's checkpoint row for this transaction and check it is still where the batch was read from."""
    if tx.dialect == "postgresql":
        # Losing this commit in a crash loses its checkpoint with it, and the batch is simply
        # applied again: it need not wait for the WAL flush (set in the same round trip).
        sql = (
            "SELECT position, set_config('synchronous_commit', 'off', true) FROM tidings_checkpoints "
            "WHERE name = ? FOR UPDATE"
        )
    else:
        sql = "SELECT position FROM tidings_checkpoints WHERE name = ?"  # BEGIN IMMEDIATE already serialises
    rows = await tx.fetch(sql, (run.checkpoint,))
    actual = int(rows[0][0]) if rows else None
    if actual != expected:
        raise _CheckpointMoved(actual)


async def _lock_projection(tx: Store, name: str) -> None:
    """Serialise setup and swaps of one projection across processes (PostgreSQL; SQLite serialises writes)."""
    if tx.dialect == "postgresql":
        await tx.fetch("SELECT pg_advisory_xact_lock(?, hashtext(?))", (_LOCK_NAMESPACE, name))


async def _table_exists(tx: Store, table: str) -> bool:
    if tx.dialect == "postgresql":
        rows = await tx.fetch("SELECT to_regclass(?) IS NOT NULL", (table,))
        return bool(rows[0][0])
    return bool(await tx.fetch("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)))


async def _prepare(store: Store, projection: Projection) -> None:
    name = projection.name
    async with store.transaction() as tx:
        await _lock_projection(tx, name)
        existing = [t for t in projection.tables if await _table_exists(tx, t)]
        if not existing:
            for statement in projection.ddl(tx.dialect):
                await tx.run(statement)
        elif len(existing) < len(projection.tables):
            missing = sorted(set(projection.tables) - set(existing))
            raise TidingsError(
                f"projection {name}: tables {missing} are missing but {sorted(existing)} exist; "
                f"run `tidings projections rebuild {name}` to recreate them all"
            )
        await tx.run(
            "INSERT INTO tidings_checkpoints (name, position, updated_at) VALUES (?, 0, ?) ON CONFLICT (name) DO NOTHING",
            (_checkpoint_name(name, "live"), utc_now()),
        )
        await tx.run(
            "INSERT INTO tidings_projections (name, tables, fingerprint) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
            (name, ",".join(projection.tables), projection.fingerprint(tx.dialect)),
        )
        rows = await tx.fetch("SELECT fingerprint FROM tidings_projections WHERE name = ?", (name,))
    projection._forget_table_types()
    if rows and rows[0][0] != projection.fingerprint(store.dialect):
        log.warning(
            "projection %s: its tables were created from other DDL than the code declares now; "
            "run `tidings projections rebuild %s` to build them anew",
            name, name,
        )


async def _start_rebuild(store: Store, projection: Projection, token: str) -> None:
    name = projection.name
    async with store.transaction() as tx:
        await _lock_projection(tx, name)
        await tx.run(
            "UPDATE tidings_projections SET rebuild_token = ?, rebuild_started_at = ? WHERE name = ?",
            (token, utc_now(), name),
        )
        await _drop(tx, [t + REBUILD_SUFFIX for t in projection.tables])
        for statement in projection.ddl(tx.dialect, "rebuild"):
            await tx.run(statement)
        checkpoint = _checkpoint_name(name, "rebuild")
        await tx.run(
            "INSERT INTO tidings_checkpoints (name, position, updated_at) VALUES (?, 0, ?) "
            "ON CONFLICT (name) DO UPDATE SET position = 0, updated_at = excluded.updated_at",
            (checkpoint, utc_now()),
        )
    projection._forget_table_types()


async def _drop(tx: Store, tables: list[str]) -> None:
    if not tables:
        return
    if tx.dialect == "postgresql":
        await tx.run(f"DROP TABLE IF EXISTS {', '.join(quoted(t, tx.dialect) for t in tables)}")
        return
    # Tables of one projection may reference each other: check foreign keys at commit, when all are gone.
    await tx.run("PRAGMA defer_foreign_keys = ON")
    for table in tables:
        await tx.run(f"DROP TABLE IF EXISTS {quoted(table, tx.dialect)}")


async def _swap(store: Store, projection: Projection, token: str, position: int) -> None:
    """In one transaction: drop the live tables, rename the rebuilt ones in, set the checkpoint to ``position``."""
    name = projection.name
    for attempt in range(1, 6):
        try:
            async with store.transaction() as tx:
                if tx.dialect == "postgresql":
                    # A long query on the live tables would make the DROP wait, and every reader
                    # queue behind it: give up quickly and try again instead of stalling readers.
                    await tx.run("SET LOCAL lock_timeout = '2s'")
                await _lock_projection(tx, name)
                await tx.fetch(
                    "SELECT position FROM tidings_checkpoints WHERE name = ?"
                    + (" FOR UPDATE" if tx.dialect == "postgresql" else ""),
                    (_checkpoint_name(name, "live"),),
                )
                rows = await tx.fetch("SELECT rebuild_token FROM tidings_projections WHERE name = ?", (name,))
                rebuilt = await tx.fetch(
                    "SELECT position FROM tidings_checkpoints WHERE name = ?", (_checkpoint_name(name, "rebuild"),)
                )
                if not rows or rows[0][0] != token or not rebuilt or int(rebuilt[0][0]) != position:
                    raise TidingsError(
                        f"projection {name}: another rebuild started while this one ran; this one stops "
                        "(the live tables are untouched)"
                    )
                await _drop(tx, list(projection.tables))
                for table in projection.tables:
                    fresh, live = quoted(table + REBUILD_SUFFIX, tx.dialect), quoted(table, tx.dialect)
                    await tx.run(f"ALTER TABLE {fresh} RENAME TO {live}")
                    await _rename_dependents(tx, table)
                await tx.run(
                    "UPDATE tidings_checkpoints SET position = ?, updated_at = ? WHERE name = ?",
                    (position, utc_now(), _checkpoint_name(name, "live")),
                )
                await tx.run("DELETE FROM tidings_checkpoints WHERE name = ?", (_checkpoint_name(name, "rebuild"),))
                await tx.run(
                    "UPDATE tidings_projections SET tables = ?, fingerprint = ?, rebuild_token = NULL, "
                    "rebuild_started_at = NULL, rebuilt_at = ?, failed_position = NULL, failed_at = NULL, "
                    "last_error = NULL WHERE name = ?",
                    (",".join(projection.tables), projection.fingerprint(tx.dialect), utc_now(), name),
                )
            return
        except Exception as exc:
            if attempt == 5 or type(exc).__name__ != "LockNotAvailable":
                raise
            log.warning("projection %s: readers hold the live tables; swap attempt %d waits and retries", name, attempt)
            await asyncio.sleep(0.5 * attempt)


async def _rename_dependents(tx: Store, table: str) -> None:
    """Give the rebuilt table's indexes (and sequences) the names the live table's had."""
    old_prefix = table + REBUILD_SUFFIX
    if tx.dialect == "postgresql":
        # Renaming an index that backs a constraint renames the constraint too.
        rows = await tx.fetch(
            "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_class t ON t.relnamespace = c.relnamespace "
            "WHERE t.oid = to_regclass(?) AND c.relkind IN ('i', 'I', 'S') AND starts_with(c.relname, ?)",
            (table, old_prefix),
        )
        for relname, relkind in rows:
            kind = "SEQUENCE" if relkind == "S" else "INDEX"
            renamed = quoted(table + relname[len(old_prefix) :], tx.dialect)
            await tx.run(f"ALTER {kind} {quoted(relname, tx.dialect)} RENAME TO {renamed}")
        return
    # SQLite renames its automatic indexes with the table, and cannot rename the others: create
    # them again under the live name (inside the same transaction, so readers never miss one).
    rows = await tx.fetch(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL", (table,)
    )
    for index, sql in rows:
        if index.startswith(old_prefix):
            await tx.run(f"DROP INDEX {quoted(index, tx.dialect)}")
            await tx.run(sql.replace(index, table + index[len(old_prefix) :], 1))


def _check_table_names(projections: Iterable[Projection]) -> None:
    owner: dict[str, str] = {}
    for projection in projections:
        for table in projection.tables:
            if table in owner:
                raise ValueError(f"projections {owner[table]} and {projection.name} both declare table {table!r}")
            owner[table] = projection.name


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
