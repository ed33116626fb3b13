"""Rich tables of journal entries and outbox rows, shared by the CLI and the demo."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
from rich.table import Table

from tidings.store.outbox import OutboxStatus
from tidings.store.records import OutboxRow, StoredEvent

__all__ = ["journal_table", "outbox_table", "status_table"]


def _short(value: str | None, width: int = 8) -> str:
    return "" if not value else value[-width:]


def journal_table(events: Sequence[StoredEvent], title: str = "journal") -> Table:
    """One row per domain event: position, stream@version, type, causation chain, payload."""
    table = Table(title=title, title_justify="left")
    for column in ("pos", "stream", "v", "event", "correlation", "causation", "payload"):
        table.add_column(column, overflow="fold")
    for event in events:
        envelope = msgspec.json.decode(event.envelope)
        table.add_row(
            str(event.position),
            event.stream_id,
            str(event.stream_version),
            f"{event.event_type} v{event.schema_version}",
            "…" + _short(event.correlation_id),
            "…" + _short(envelope.get("causation_id")),
            event.payload.decode(),
        )
    return table


def outbox_table(rows: Sequence[OutboxRow], title: str = "outbox") -> Table:
    """One row per outbox entry: id, partition/key, topic, type, delivery state, payload."""
    table = Table(title=title, title_justify="left")
    for column in ("id", "partition", "key", "topic", "state", "causation", "payload"):
        table.add_column(column, overflow="fold")
    for row in rows:
        envelope = msgspec.json.decode(row.envelope)
        state = "parked" if row.parked_at else "delivered" if row.delivered_at else f"pending ({row.attempts} tries)"
        table.add_row(
            str(row.id),
            str(row.partition),
            row.partition_key,
            row.topic,
            state,
            "…" + _short(envelope.get("causation_id")),
            row.payload.decode(),
        )
    return table


def status_table(status: OutboxStatus) -> Table:
    """The outbox at a glance: totals in the title, one row per partition with a backlog, then the relays."""
    age = "—" if status.oldest_age_s is None else f"{status.oldest_age_s:.1f} s"
    table = Table(
        title=f"outbox: {status.backlog} undelivered (oldest {age}), {status.parked} parked, {status.retrying} retrying",
        title_justify="left",
    )
    for column in ("partition", "backlog", "parked", "retrying", "oldest", "owner"):
        table.add_column(column)
    for p in status.partitions:
        table.add_row(
            str(p.partition), str(p.backlog), str(p.parked), str(p.retrying),
            p.oldest_at.isoformat(timespec="seconds") if p.oldest_at else "", p.owner or "[yellow]nobody[/yellow]",
        )
    for relay_id, partitions, age_s in status.relays:
        table.add_row("", "", "", "", "", f"relay {relay_id}: {partitions or 'none'} (heartbeat {age_s:.0f} s ago)")
    return table
