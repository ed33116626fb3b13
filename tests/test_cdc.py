"""Change data capture from a legacy table on a private PostgreSQL with wal_level=logical.

The machine's own PostgreSQL runs wal_level=replica and is never reconfigured: this module starts
a private cluster (initdb + pg_ctl as the postgres user, a free port) and gives each test a fresh
database in it, holding both the legacy table and tidings' store.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from support import unavailable
from tidings.cdc import CdcConfigurationError, CdcRunner, SlotReader, change_event_id
from tidings.cdc.pgoutput import DecodeError, decode
from tidings.store import Store, open_store

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from logical_cluster import PostgresCluster, fresh_database, logical_cluster  # noqa: E402

from cdc_model import LEGACY_DDL, make_capture  # noqa: E402  (also what the CLI process imports)


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    """A private PostgreSQL with wal_level=logical for this module."""
    with logical_cluster("cdc") as server:
        yield server


@pytest.fixture
async def database(cluster: PostgresCluster) -> AsyncIterator[str]:
    """A fresh database in the private cluster with the legacy tables; its URL."""
    async with fresh_database(cluster, "cdc", LEGACY_DDL) as url:
        yield url


async def legacy(url: str, *statements: str) -> None:
    """Run statements against the legacy tables as the monolith would: one transaction."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        async with conn.transaction():
            for statement in statements:
                await conn.execute(statement)


async def runner_for(url: str, slot: str = "orders_cdc") -> tuple[Store, CdcRunner]:
    store = await open_store(url, migrate=True)
    reader = SlotReader(url, slot, ["legacy_orders"])
    await reader.setup()
    return store, CdcRunner(store, reader, make_capture())


async def outbox(store: Store) -> list[tuple[str, str, str]]:
    rows = await store.fetch("SELECT event_id::text, partition_key, payload::text FROM tidings_outbox ORDER BY id")
    return [(str(a), str(b), str(c)) for a, b, c in rows]


async def drain(runner: CdcRunner) -> None:
    while await runner.run_once():
        pass


async def test_each_acceptance_becomes_one_event_in_commit_order_and_noise_is_dropped(database: str) -> None:
    # Given a capture set up before the monolith writes
    store, runner = await runner_for(database)
    try:
        # When orders are inserted, accepted in two transactions, and one is only re-noted
        await legacy(database, "INSERT INTO legacy_orders VALUES ('o1', 'P', '10.50', NULL), ('o2', 'P', '3', NULL)")
        await legacy(database, "UPDATE legacy_orders SET status = 'A' WHERE id = 'o2'")
        await legacy(database, "UPDATE legacy_orders SET status = 'A' WHERE id = 'o1'", "UPDATE legacy_orders SET note = 'x' WHERE id = 'o2'")
        await drain(runner)

        # Then two events, o2 before o1 (commit order), and the inserts and the note were dropped, counted
        rows = await outbox(store)
        assert [key for _, key, _ in rows] == ["o2", "o1"]
        assert json.loads(rows[1][2]) == {"order_id": "o1", "amount_cents": 1050}
        checkpoint = await runner.checkpoint()
        assert checkpoint is not None and (checkpoint.translated, checkpoint.dropped, checkpoint.dead_lettered) == (2, 3, 0)
    finally:
        await runner.reader.close()
        await store.close()


async def test_many_rows_of_one_transaction_share_a_commit_lsn_and_every_one_is_translated(database: str) -> None:
    store, runner = await runner_for(database)
    try:
        # Given 300 pending orders, then ONE transaction accepting all of them
        await legacy(database, "INSERT INTO legacy_orders SELECT 'o' || n, 'P', n || '.00', NULL FROM generate_series(1, 300) n")
        await drain(runner)
        await legacy(database, "UPDATE legacy_orders SET status = 'A'")

        # When captured with a small batch (the server still returns the transaction whole)
        runner.max_changes = 10
        await drain(runner)

        # Then all 300 were translated, once each, with distinct deterministic ids
        rows = await outbox(store)
        assert len(rows) == 300 and len({event_id for event_id, _, _ in rows}) == 300
    finally:
        await runner.reader.close()
        await store.close()


async def test_a_crash_between_the_outbox_commit_and_the_slot_advance_re_reads_and_skips_what_was_committed(database: str) -> None:
    store, runner = await runner_for(database)
    try:
        # Given a transaction whose events and checkpoint committed, but the slot was never advanced
        await legacy(database, "INSERT INTO legacy_orders VALUES ('o1', 'P', '1', NULL)", "UPDATE legacy_orders SET status = 'A' WHERE id = 'o1'")
        [tx] = await runner.reader.peek()
        await runner._commit([tx])  # the crash comes right after this commit, before advance()
        assert len(await outbox(store)) == 1

        # When a new runner (a restarted process) reads the slot, which still holds that transaction
        await legacy(database, "INSERT INTO legacy_orders VALUES ('o2', 'P', '2', NULL)", "UPDATE legacy_orders SET status = 'A' WHERE id = 'o2'")
        store2, restarted = await runner_for(database)
        try:
            await drain(restarted)
            # Then the committed transaction was skipped (not published twice) and the next one captured
            assert restarted.skipped == 1
            assert [key for _, key, _ in await outbox(store2)] == ["o1", "o2"]
        finally:
            await restarted.reader.close()
            await store2.close()
    finally:
        await runner.reader.close()
        await store.close()


async def test_a_restart_resumes_after_the_last_committed_transaction_and_never_past_an_unprocessed_one(database: str) -> None:
    store, runner = await runner_for(database)
    try:
        await legacy(database, "INSERT INTO legacy_orders VALUES ('o1', 'P', '1', NULL)", "UPDATE legacy_orders SET status = 'A' WHERE id = 'o1'")
        await drain(runner)
        await runner.reader.close()
        # While no runner runs, two more transactions commit
        await legacy(database, "INSERT INTO legacy_orders VALUES ('o2', 'P', '2', NULL)", "UPDATE legacy_orders SET status = 'A' WHERE id = 'o2'")
        await legacy(database, "INSERT INTO legacy_orders VALUES ('o3', 'P', '3', NULL)", "UPDATE legacy_orders SET status = 'A' WHERE id = 'o3'")
        store2, restarted = await runner_for(database)
        try:
            await drain(restarted)
            assert [key for _, key, _ in await outbox(store2)] == ["o1", "o2", "o3"]
        finally:
            await restarted.reader.close()
            await store2.close()
    finally:
        await store.close()


async def test_a_garbage_row_is_dead_lettered_with_its_column_and_the_rest_flows(database: str) -> None:
    store, runner = await runner_for(database)
    try:
        await legacy(database, "INSERT INTO legacy_orders VALUES ('o1', 'P', '1', NULL), ('o2', 'P', 'twelve', NULL)")
        await legacy(database, "UPDATE legacy_orders SET status = 'A'", "INSERT INTO legacy_orders VALUES ('o3', '?', '1', NULL)")
        await drain(runner)
        assert [key for _, key, _ in await outbox(store)] == ["o1"]
        dead = await store.fetch("SELECT partition_key, reason, error FROM tidings_dead_letters WHERE consumer = 'cdc:orders_cdc' ORDER BY id")
        assert [(k, r) for k, r, _ in dead] == [("o2", "unreadable row"), ("o3", "unreadable row")]
        assert "'amount'" in dead[0][2] and "twelve" in dead[0][2] and "'status'" in dead[1][2]
    finally:
        await runner.reader.close()
        await store.close()


async def test_event_ids_are_the_same_when_a_transaction_is_read_again(database: str) -> None:
    store, runner = await runner_for(database)
    try:
        await legacy(database, "INSERT INTO legacy_orders VALUES ('o1', 'P', '1', NULL)", "UPDATE legacy_orders SET status = 'A' WHERE id = 'o1'")
        first = await runner.reader.peek()
        again = await runner.reader.peek()  # peek does not move the slot: the same transaction again
        ids = [change_event_id(c, 0) for tx in first for c in tx.changes]
        assert ids == [change_event_id(c, 0) for tx in again for c in tx.changes] and len(set(ids)) == 2
    finally:
        await runner.reader.close()
        await store.close()


async def test_a_table_without_replica_identity_full_is_refused_at_start_with_the_fix(database: str) -> None:
    await legacy(database, "ALTER TABLE legacy_orders REPLICA IDENTITY DEFAULT")
    reader = SlotReader(database, "orders_cdc", ["legacy_orders"])
    try:
        with pytest.raises(CdcConfigurationError, match=r"REPLICA IDENTITY DEFAULT.*ALTER TABLE public.legacy_orders REPLICA IDENTITY FULL"):
            await reader.setup()
    finally:
        await reader.close()


async def test_unsafe_slot_names_are_refused_before_any_sql() -> None:
    with pytest.raises(CdcConfigurationError, match="not allowed"):
        SlotReader("postgresql://unused", 'x"; DROP TABLE t; --', ["legacy_orders"])


async def test_an_idle_slot_whose_tables_do_not_change_still_moves_so_it_pins_no_wal(database: str) -> None:
    # Given a capture of legacy_orders only, and heavy writing to another table
    store = await open_store(database, migrate=True)
    reader = SlotReader(database, "idle_cdc", ["legacy_orders"])
    await reader.setup()
    runner = CdcRunner(store, reader, make_capture())
    try:
        before = (await reader.status()).confirmed_lsn
        for _ in range(20):
            await legacy(database, "INSERT INTO legacy_audit (line) SELECT repeat('x', 200) FROM generate_series(1, 50)")

        # When the runner finds nothing to capture
        assert await runner.run_once() == 0

        # Then the slot moved forward anyway, and its lag is small
        status = await reader.status()
        assert status.confirmed_lsn != before and status.lag_bytes is not None and status.lag_bytes < 64 * 1024, status
    finally:
        await reader.close()
        await store.close()


def test_a_cut_short_pgoutput_message_is_a_decode_error_not_garbage() -> None:
    with pytest.raises(DecodeError, match="cut short"):
        decode(b"B\x00\x00")
    with pytest.raises(DecodeError, match="unknown pgoutput message kind"):
        decode(b"Z")


async def test_cdc_killed_with_sigkill_mid_stream_loses_and_doubles_nothing(database: str, tmp_path: Path) -> None:
    # Given the CLI's runner as a process, restarted after kill -9 several times while the monolith writes
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src"), str(REPO / "tests")])}
    argv = [sys.executable, "-m", "tidings.cli", "cdc", "run", "--source", database, "-d", database, "--slot", "crash_cdc",
            "--app", "cdc_model:make_capture", "--poll-interval", "0.05"]  # fmt: skip
    store = await open_store(database, migrate=True)
    # The slot exists before the monolith writes (a slot sees only what commits after it was made).
    reader = SlotReader(database, "crash_cdc", ["legacy_orders"])
    await reader.setup()
    await reader.close()
    log = (tmp_path / "cdc.log").open("ab")
    process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

    async def monolith() -> None:
        for n in range(1, 201):
            await legacy(database, f"INSERT INTO legacy_orders VALUES ('o{n}', 'P', '{n}', NULL)",
                         f"UPDATE legacy_orders SET status = 'A' WHERE id = 'o{n}'")  # fmt: skip
            await asyncio.sleep(0.01)

    writing = asyncio.create_task(monolith())
    kills = 0
    try:
        # When the process is killed each time it has captured 25 more, mid-stream
        last = 0
        for _ in range(1200):
            captured = len(await outbox(store))
            if captured >= 200:
                break
            if captured - last >= 25 and kills < 5:
                process.send_signal(signal.SIGKILL)
                process.wait(10)
                kills += 1
                last = captured
                process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            await asyncio.sleep(0.05)
        await writing
        for _ in range(600):
            if len(await outbox(store)) >= 200:
                break
            await asyncio.sleep(0.1)
        rows = await outbox(store)
        # Then each acceptance is in the outbox exactly once, in commit order, after every kill
        assert kills >= 3, (tmp_path / "cdc.log").read_text()[-2000:]
        assert [key for _, key, _ in rows] == [f"o{n}" for n in range(1, 201)], (tmp_path / "cdc.log").read_text()[-2000:]
    finally:
        writing.cancel()
        process.send_signal(signal.SIGTERM)
        process.wait(10)
        log.close()
        await store.close()


async def test_a_database_crash_under_a_running_capture_is_ridden_out_and_nothing_is_lost_or_doubled(
    database: str, cluster: PostgresCluster
) -> None:
    # Given a capture running as a task, and some acceptances already captured
    store, runner = await runner_for(database)
    runner.poll_interval = 0.05
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        for n in range(1, 6):
            await legacy(database, f"INSERT INTO legacy_orders VALUES ('o{n}', 'P', '1', NULL)",
                         f"UPDATE legacy_orders SET status = 'A' WHERE id = 'o{n}'")  # fmt: skip
        for _ in range(200):
            if len(await outbox(store)) >= 5:
                break
            await asyncio.sleep(0.05)

        # When PostgreSQL crashes (immediate: recovery from the WAL) and more commits follow
        await cluster.restart("immediate")
        for n in range(6, 11):
            await legacy(database, f"INSERT INTO legacy_orders VALUES ('o{n}', 'P', '1', NULL)",
                         f"UPDATE legacy_orders SET status = 'A' WHERE id = 'o{n}'")  # fmt: skip

        # Then the running capture recovers by itself and every acceptance is there once, in order
        for _ in range(400):
            try:
                if len(await outbox(store)) >= 10 or task.done():
                    break
            except psycopg.OperationalError:
                pass  # this test's own pooled connection may be one the crash cut
            await asyncio.sleep(0.05)
        assert not task.done(), task.exception() if task.done() else None
        assert [key for _, key, _ in await outbox(store)] == [f"o{n}" for n in range(1, 11)]
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await runner.reader.close()
        await store.close()
