"""``python -m faults crash-cdc --json``: the CDC process killed with SIGKILL at random points, and the database restarted.

On a private PostgreSQL (wal_level=logical) the legacy monolith releases orders again and again
(NW → OK, then HD → OK with the next quantity: each release is an acceptance the ACL translates,
and each order's releases must come out in commit order). Some transactions release several
orders at once (rows sharing one commit LSN). Meanwhile ``tidings cdc run`` runs as a process that
the harness kills with SIGKILL at seeded random moments and starts again; once, the database is
restarted with ``pg_ctl restart -m immediate`` (a crash and recovery) and the CDC process is
started again whenever it exits. The writer knows which releases committed (after a failed commit
it reads the row back).

Printed per business key, summed: ``lost`` (a committed release with no event), ``phantom`` (an
event with no committed release), ``duplicate_effects`` (a release with more than one event),
``order_violations`` (an order's events out of release order). Exit 0 only if all are 0 and the run
killed the process at least twice and restarted the database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

__all__ = ["main", "run"]

REPO = Path(__file__).resolve().parent.parent
SLOT = "crash_cdc"


async def run(seed: int = 1, orders: int = 60, rounds: int = 5) -> dict[str, Any]:
    """One run on a private logical cluster; the figures."""
    from faults.servers import PostgresCluster

    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="tidings-crash-cdc-"))
    root.chmod(0o755)
    cluster = PostgresCluster(root / "pg", settings={"wal_level": "logical", "max_replication_slots": "10", "max_wal_senders": "10"})
    await cluster.start()
    log = (root / "cdc.log").open("ab")
    try:
        name = f"crash_cdc_{uuid.uuid4().hex[:8]}"
        async with await psycopg.AsyncConnection.connect(cluster.url, autocommit=True) as conn:
            await conn.execute(f'CREATE DATABASE "{name}"')  # a name made here, never from input
        url = cluster.url.rsplit("/", 1)[0] + f"/{name}"
        return await _scenario(cluster, url, rng, orders, rounds, log)
    finally:
        log.close()
        await cluster.stop()
        cluster.destroy()


class _Cdc:
    """The ``tidings cdc run`` process, started again whenever it is killed or exits."""

    def __init__(self, url: str, log: Any) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")])}
        self.argv = [sys.executable, "-m", "tidings.cli", "cdc", "run", "--source", url, "-d", url, "--slot", SLOT,
                     "--app", "examples.fulfilment.legacy.acl:capture", "--poll-interval", "0.05"]  # fmt: skip
        self.env = env
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.kills = 0
        self.exits = 0

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.kills += 1
        self.start()

    def supervise(self) -> None:
        """Start it again if it exited by itself (the database went away under it)."""
        if self.process is not None and self.process.poll() is not None:
            self.exits += 1
            self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


async def _scenario(cluster: Any, url: str, rng: random.Random, orders: int, rounds: int, log: Any) -> dict[str, Any]:
    from examples.fulfilment.cutover import ROUTING_DDL
    from examples.fulfilment.legacy.oms import LEGACY_DDL
    from tidings.cdc import SlotReader
    from tidings.store import open_store

    started = time.monotonic()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for statement in (*LEGACY_DDL, *ROUTING_DDL):
            await conn.execute(statement)
    store = await open_store(url, migrate=True)
    await store.close()
    # The slot exists before the monolith writes (a slot sees only what commits after it was made).
    reader = SlotReader(url, SLOT, ["oms_orders", "fulfilment_market_routing"])
    await reader.setup()
    await reader.close()

    cdc = _Cdc(url, log)
    cdc.start()
    committed: dict[str, list[int]] = {}
    keys = [f"K-{n}" for n in range(1, orders + 1)]
    kills_wanted = 4
    restarted = 0
    writing = True

    async def commit(statements: list[tuple[str, tuple[Any, ...]]], check: list[tuple[str, int]]) -> None:
        """Run one legacy transaction until it is known committed (after an error the rows are read back)."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(url, connect_timeout=5) as conn:
                    async with conn.transaction():
                        for sql, params in statements:
                            await conn.execute(sql, params)
                break
            except psycopg.Error:
                await asyncio.sleep(0.2)
                try:
                    async with await psycopg.AsyncConnection.connect(url, connect_timeout=5) as conn:
                        seen = 0
                        for key, qty in check:
                            row = await (await conn.execute("SELECT sts, qty FROM oms_orders WHERE ord_no = %s", (key,))).fetchone()
                            seen += int(row is not None and row[0] == "OK" and int(row[1]) == qty)
                    if check and seen == len(check):
                        break  # the commit went through before the connection was lost
                except psycopg.Error:
                    continue
        for key, qty in check:
            committed.setdefault(key, []).append(qty)

    async def monolith() -> None:
        for key in keys:
            await commit([("INSERT INTO oms_orders VALUES (%s, 'DE', 'W', 'NW', '10,00', 'EUR', 'SKU', 0, "
                           "now() AT TIME ZONE 'Europe/Berlin')", (key,))], [])  # fmt: skip
        for qty in range(1, rounds + 1):
            pending = list(keys)
            rng.shuffle(pending)
            while pending:
                # One to three orders per transaction: their rows share a commit LSN.
                n = rng.randint(1, 3)
                batch, pending = pending[:n], pending[n:]
                statements = []
                for key in batch:
                    if qty > 1:
                        statements.append(("UPDATE oms_orders SET sts = 'HD' WHERE ord_no = %s", (key,)))
                    statements.append(("UPDATE oms_orders SET sts = 'OK', qty = %s WHERE ord_no = %s", (qty, key)))
                await commit(statements, [(key, qty) for key in batch])
                await asyncio.sleep(rng.uniform(0.005, 0.03))

    async def captured() -> int:
        try:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=5) as conn:
                return int((await (await conn.execute("SELECT count(*) FROM tidings_outbox")).fetchone())[0])  # type: ignore[index]
        except psycopg.Error:
            return -1

    async def faults() -> None:
        # Each fault waits until the process (restarted after the last one) has captured more: a kill
        # while it is still importing would test nothing.
        nonlocal restarted
        plan = ["kill"] * kills_wanted
        plan.insert(rng.randrange(1, kills_wanted), "restart-db")
        for fault in plan:
            base = await captured()
            step = rng.randint(3, 15)
            while writing and await captured() < base + step:
                cdc.supervise()
                await asyncio.sleep(0.02)
            if not writing:
                return
            await asyncio.sleep(rng.uniform(0, 0.1))  # a random point in the process's loop
            if fault == "kill":
                cdc.kill()
            else:
                await cluster.restart("immediate")
                restarted += 1

    faulting = asyncio.create_task(faults())
    await monolith()
    writing = False
    await faulting

    expected = sum(len(v) for v in committed.values())
    # Wait until everything committed is captured, or nothing more comes for 10 s (then it is lost).
    deadline = time.monotonic() + 90
    events: list[tuple[str, int]] = []
    last_growth, last_count = time.monotonic(), -1
    while time.monotonic() < deadline and time.monotonic() - last_growth < 10:
        cdc.supervise()
        try:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                rows = await (await conn.execute("SELECT partition_key, (payload->>'quantity')::int FROM tidings_outbox ORDER BY id")).fetchall()
            events = [(str(k), int(q)) for k, q in rows]
        except psycopg.Error:
            pass
        if len(events) >= expected:
            break
        if len(events) > last_count:
            last_growth, last_count = time.monotonic(), len(events)
        await asyncio.sleep(0.2)
    cdc.stop()

    per_key: dict[str, list[int]] = {}
    for key, qty in events:
        per_key.setdefault(key, []).append(qty)
    lost = phantom = duplicates = order_violations = 0
    for key in set(committed) | set(per_key):
        want, got = committed.get(key, []), per_key.get(key, [])
        lost += len(set(want) - set(got))
        phantom += len(set(got) - set(want))
        duplicates += len(got) - len(set(got))
        order_violations += sum(1 for a, b in zip(got, got[1:], strict=False) if b <= a)
    return {
        "scenario": "crash-cdc",
        "orders": orders,
        "releases_committed": expected,
        "events": len(events),
        "kills": cdc.kills,
        "db_restarts": restarted,
        "cdc_exits_restarted": cdc.exits,
        "lost": lost,
        "phantom": phantom,
        "duplicate_effects": duplicates,
        "order_violations": order_violations,
        "seconds": round(time.monotonic() - started, 1),
    }


def failures(result: dict[str, Any]) -> list[str]:
    """What makes the run fail, in words (empty: it passed)."""
    found = [f"{name} = {result[name]}" for name in ("lost", "phantom", "duplicate_effects", "order_violations") if result[name]]
    if result["kills"] < 2:
        found.append(f"only {result['kills']} kill(s): the run tested too little")
    if result["db_restarts"] < 1:
        found.append("the database was not restarted")
    return found


def main(argv: list[str] | None = None) -> int:
    """Run it; print the figures; exit 0 only if nothing was lost, doubled or reordered and the faults fired."""
    parser = argparse.ArgumentParser(prog="python -m faults crash-cdc", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1, help="seeds the kill points, batches and the restart")
    parser.add_argument("--orders", type=int, default=60, help="legacy orders (business keys)")
    parser.add_argument("--rounds", type=int, default=5, help="releases per order")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.seed, args.orders, args.rounds))
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(f"{name:>20}: {value}")
    problems = failures(result)
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0
