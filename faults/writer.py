"""A writer process: runs Tick commands on its keys until SIGTERM, noting each command's id before it is sent.

``python -m faults.writer --keys a,b --intents FILE [--rate N] [--fail-rate P] [--seed S]`` with
``TIDINGS_DATABASE_URL`` set. The intents file is the writer's side journal: a line
``cmd_id key T|F`` is written (to the kernel, so a kill -9 cannot take it back) before the command
is handled, ``ok cmd_id`` after it committed and ``rb cmd_id`` after it rolled back. Whether a
command whose writer died meanwhile committed is for the database to say, not this file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import time

from tidings.messaging import MessageContext, new_id
from tidings.store import open_store

from faults.model import TENANT, RolledBack, Tick, make_app


async def write(keys: list[str], intents: str, rate: float, fail_rate: float, seed: int) -> None:
    """Handle commands at ``rate`` per second, round robin over ``keys``, until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    store = await open_store(os.environ["TIDINGS_DATABASE_URL"])
    print(f"writer {os.getpid()}: writing to {', '.join(keys)} at {rate:g}/s", file=sys.stderr, flush=True)
    app = make_app(store)
    rng = random.Random(seed)
    fd = os.open(intents, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    context = MessageContext(tenant=TENANT)
    interval = 1.0 / rate if rate > 0 else 0.0
    next_at = time.monotonic()
    index = 0
    failures = 0
    try:
        while not stop.is_set():
            key = keys[index % len(keys)]
            index += 1
            cmd_id = new_id()
            fail = rng.random() < fail_rate
            os.write(fd, f"{cmd_id} {key} {'F' if fail else 'T'}\n".encode())
            try:
                await app.handle(Tick(key=key, cmd_id=cmd_id, fail=fail), context=context, retries=5)
                os.write(fd, f"ok {cmd_id}\n".encode())
                failures = 0
            except RolledBack:
                os.write(fd, f"rb {cmd_id}\n".encode())
            except Exception as exc:  # the database went away (db-restart): the outcome is the database's to tell
                failures += 1
                print(f"writer {os.getpid()}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                await asyncio.sleep(min(2.0, 0.1 * failures))
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
            else:
                next_at = time.monotonic()  # behind: do not burst to catch up
    finally:
        os.close(fd)
        await store.close()


def main() -> None:
    """Parse the arguments and write until stopped."""
    parser = argparse.ArgumentParser(prog="python -m faults.writer")
    parser.add_argument("--keys", required=True)
    parser.add_argument("--intents", required=True)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--fail-rate", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(write(args.keys.split(","), args.intents, args.rate, args.fail_rate, args.seed))


if __name__ == "__main__":
    main()
