"""The invariants, computed from the database (journal, outbox, effects, dead letters) and what the broker delivered.

Each figure is a count of things that must not exist; see docs/decisions/0011-fault-harness.md for
why each source can be trusted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tidings.store import Store

from faults.model import CONSUMER, TOPIC


@dataclass(slots=True)
class Intents:
    """What the writers meant to do: every command id sent, and those known to have rolled back."""

    attempted: dict[str, str] = field(default_factory=dict)  # cmd_id -> key
    meant_to_fail: set[str] = field(default_factory=set)
    confirmed: set[str] = field(default_factory=set)
    rolled_back: set[str] = field(default_factory=set)


def read_intents(paths: list[Path]) -> Intents:
    """Parse the writers' side journals; a line cut short by a kill -9 is ignored (its command was never sent)."""
    intents = Intents()
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2] in ("T", "F"):
                intents.attempted[parts[0]] = parts[1]
                if parts[2] == "F":
                    intents.meant_to_fail.add(parts[0])
            elif len(parts) == 2 and parts[0] == "ok":
                intents.confirmed.add(parts[1])
            elif len(parts) == 2 and parts[0] == "rb":
                intents.rolled_back.add(parts[1])
    return intents


def read_deliveries(paths: list[Path]) -> list[tuple[str, str]]:
    """Every (group, event id) the broker delivered to a consumer process, redeliveries included (cut lines dropped)."""
    found: list[tuple[str, str]] = []
    for path in paths:
        if path.exists():
            for line in path.read_text().splitlines():
                group, _, event_id = line.rpartition(" ")
                if group and len(event_id) == 36:
                    found.append((group, event_id))
    return found


@dataclass(slots=True)
class Figures:
    """The counts a run reports; every one but commands, parked and refused must be zero."""

    commands: int = 0
    attempted: int = 0
    #: Commands a writer was told committed (``ok`` lines), and those of them absent from the journal.
    confirmed: int = 0
    confirmed_missing: int = 0
    lost: int = 0
    phantom: int = 0
    duplicate_effects: int = 0
    order_violations: int = 0
    parked: int = 0
    relay_parked: int = 0
    unintended: int = 0
    redeliveries: int = 0
    details: list[str] = field(default_factory=list)


async def committed(store: Store) -> list[tuple[str, str, int, str, bool, bool]]:
    """The outbox's tick rows: (cmd_id, key, n, event_id, delivered, parked) — written in each command's own transaction."""
    rows = await store.fetch(
        "SELECT payload->>'cmd_id', partition_key, (payload->>'n')::int, event_id::text, delivered_at IS NOT NULL, "
        "parked_at IS NOT NULL FROM tidings_outbox WHERE event_type = ?",
        (TOPIC,),
    )
    return [(str(a), str(b), int(c), str(d), bool(e), bool(f)) for a, b, c, d, e, f in rows]


async def compute(
    store: Store, intents: Intents, deliveries: list[tuple[str, str]], poison_ids: set[str], poison_keys: set[str]
) -> Figures:
    """Count lost, phantom, duplicate and out-of-order effects, and parked messages, after the run has drained."""
    figures = Figures(attempted=len(intents.attempted))
    outbox = await committed(store)
    journal = {str(c) for (c,) in await store.fetch("SELECT payload->>'cmd_id' FROM tidings_journal WHERE event_type = 'Ticked'")}
    figures.commands = len(journal)
    # A commit acknowledged to its caller must be in the journal: a database that confirmed and then
    # forgot (a crash before the WAL reached disk) loses exactly these, and nothing else would count them.
    figures.confirmed = len(intents.confirmed)
    missing = intents.confirmed - journal
    figures.confirmed_missing = len(missing)
    figures.lost += len(missing)
    if missing:
        figures.details.append(f"{len(missing)} confirmed command(s) missing from the journal, e.g. {sorted(missing)[:5]}")
    outbox_cmds = {row[0] for row in outbox}
    if outbox_cmds != journal:
        # Journal and outbox are written in one transaction: a difference is a broken unit of work.
        figures.details.append(f"journal and outbox disagree on {len(outbox_cmds ^ journal)} command(s)")
        figures.lost += len(journal - outbox_cmds)
        figures.phantom += len(outbox_cmds - journal)
    # A committed command no writer ever sent would mean the side journals cannot be trusted.
    figures.unintended = len(journal - set(intents.attempted))
    # Commands meant to fail, or seen rolling back, must have left nothing behind.
    bad_commits = journal & (intents.meant_to_fail | intents.rolled_back)
    if bad_commits:
        figures.details.append(f"{len(bad_commits)} rolled-back command(s) committed")
    figures.relay_parked = sum(1 for row in outbox if row[5])

    effects = await store.fetch("SELECT key, n, event_id, cmd_id FROM faults_effects ORDER BY id")
    applied_ids = [str(e) for _, _, e, _ in effects]
    outbox_ids = {row[3] for row in outbox}
    expected = {(row[1], row[2]) for row in outbox}
    applied_pairs = {(str(k), int(n)) for k, n, _, _ in effects}
    figures.lost += len(expected - applied_pairs)
    if expected - applied_pairs:
        figures.details.append(f"lost e.g. {sorted(expected - applied_pairs)[:5]}")

    # Phantoms: applied effects of commands that never committed, delivered messages no commit wrote
    # (other than the poison the harness injected itself), and rolled-back commands in the journal.
    phantom_effects = [(str(k), int(n), str(c)) for k, n, _, c in effects if str(c) not in journal]
    phantom_deliveries = {d for _, d in deliveries if d not in outbox_ids and d not in poison_ids}
    figures.phantom += len(phantom_effects) + len(phantom_deliveries) + len(bad_commits)
    if phantom_effects or phantom_deliveries:
        figures.details.append(f"phantom effects {phantom_effects[:5]}, phantom deliveries {sorted(phantom_deliveries)[:5]}")

    figures.duplicate_effects = len(applied_ids) - len(set(applied_ids))
    pairs = [(str(k), int(n)) for k, n, _, _ in effects]
    figures.duplicate_effects = max(figures.duplicate_effects, len(pairs) - len(set(pairs)))

    # Order: each key's first applications, in the order they were applied, must read 1, 2, 3…
    last: dict[str, int] = {}
    seen: set[tuple[str, int]] = set()
    for key, n in pairs:
        if (key, n) in seen:
            continue
        seen.add((key, n))
        if n != last.get(key, 0) + 1:
            figures.order_violations += 1
            if figures.order_violations <= 5:
                figures.details.append(f"order: key {key} applied #{n} after #{last.get(key, 0)}")
        last[key] = max(n, last.get(key, 0))

    dead = await store.fetch(
        "SELECT event_id, partition_key, reason, error, status FROM tidings_dead_letters WHERE consumer = ?", (CONSUMER,)
    )
    # Only the poison the harness injected counts as parked: a workload message dead-lettered must not
    # stand in for a poison message that was never parked.
    figures.parked = sum(
        1 for event_id, _, reason, error, status in dead if status == "dead" and reason and error and str(event_id) in poison_ids
    )
    stray = [(str(e), str(k), str(s)) for e, k, _, _, s in dead if str(e) not in poison_ids and str(k) not in poison_keys]
    if stray:
        figures.details.append(f"workload messages dead-lettered: {stray[:5]}")
        figures.lost += len({e for e, _, _ in stray} - set(applied_ids))
    # Deliveries of one message to one group beyond the first: what the inbox had to absorb.
    figures.redeliveries = len(deliveries) - len(set(deliveries))
    return figures
