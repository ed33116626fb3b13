"""``python -m faults SCENARIO``: run one scenario and print its figures (one JSON line last on stdout).

Scenarios: crash-writer, crash-relay, crash-consumer (kill -9 and start again), broker-restart (a
private NATS, RabbitMQ, Redis or Kafka-compatible server stopped with SIGTERM or killed with SIGKILL,
then started), db-restart (a private PostgreSQL cluster restarted fast or immediate), duplicate-and-reorder
(deliveries shuffled across keys and some delivered twice), poison (bad messages at the broker, bad
commands through the API), fuzz (garbage straight onto every broker — local, NATS, RabbitMQ, Redis,
Kafka-compatible — between good messages, on SQLite and PostgreSQL; see faults/fuzz.py).
``reconcile`` (its own options: faults/reconcile.py) injects each kind of
discrepancy into the fulfilment flow and checks that ``tidings reconcile`` finds and repairs it;
``crash-cdc`` (faults/crash_cdc.py) kills the CDC process with SIGKILL and restarts the database.

The exit status is 1 when an invariant broke, and also when the run tested nothing: no command
committed, no fault fired, or a commit nobody sent (``unintended``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from faults.harness import Run
from faults.plan import SCENARIOS, make_plan


def main(argv: list[str] | None = None) -> int:
    """Run the scenario the arguments name; exit 0 when every invariant held, 1 otherwise."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["reconcile"]:
        from faults.reconcile import main as reconcile

        return reconcile(argv[1:])
    if argv[:1] == ["crash-cdc"]:
        from faults.crash_cdc import main as crash_cdc

        return crash_cdc(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m faults", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--seed", type=int, default=1, help="seeds the fault plan: the same seed, the same plan")
    parser.add_argument("--scale", type=float, default=1.0, help="the short form's workload duration times this")
    parser.add_argument("--long", action="store_true", help="minutes of workload and thousands of commands")
    parser.add_argument("--broker", choices=("nats", "rabbitmq", "redis", "kafka", "local"), default=None,
                        help="default nats (fuzz: every broker); kafka is a private Kafka-compatible server "
                        "(noida-db); local is the store's own log")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line (always the last stdout line)")
    parser.add_argument("--plan", action="store_true", help="print the fault plan and exit without running it")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory and schema for inspection")
    parser.add_argument("--broker-stop", choices=("plan", "term"), default="plan",
                        help="plan: stop the broker as the plan says (SIGKILL or SIGTERM); term: always SIGTERM")
    args = parser.parse_args(argv)

    if args.broker == "local" and args.scenario == "broker-restart":
        parser.error("the local broker is the database's own log: it has no server to restart (use db-restart)")
    plan = make_plan(args.scenario, args.seed, args.scale, args.long)
    if args.plan:
        print(json.dumps(plan.as_dict()))
        return 0
    if args.scenario == "fuzz":
        return _fuzz(args)
    result = asyncio.run(Run(plan, broker_name=args.broker or "nats", keep=args.keep, graceful_only=args.broker_stop == "term").execute())
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(f"{name:>18}: {value}")
    return 0 if held(result) else 1


def held(result: dict[str, object]) -> bool:
    """Every invariant held AND the run tested something: commands committed, faults fired, nothing unintended."""
    failures = verdict(result)
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return not failures


def verdict(result: dict[str, object]) -> list[str]:
    """What makes a run fail, in words; an empty list means it passed."""
    failures = [f"{name} = {result[name]}" for name in ("lost", "phantom", "duplicate_effects", "order_violations", "died", "unintended")
                if result[name] != 0]  # fmt: skip
    if result["parked"] + result["refused"] != result["poison_injected"]:  # type: ignore[operator]
        failures.append(f"poison injected {result['poison_injected']}, parked {result['parked']} + refused {result['refused']}")
    if result["commands"] == 0:
        failures.append("no command committed: the run tested nothing")
    if result["faults_fired"] == 0:
        failures.append("no fault fired: the run tested nothing")
    return failures


def _fuzz(args: argparse.Namespace) -> int:
    from faults.fuzz import BROKERS, run_all
    from faults.harness import SHARED_POSTGRES, say

    brokers = [args.broker] if args.broker else list(BROKERS)
    result = asyncio.run(run_all(args.seed, long=args.long, brokers=brokers, postgres_url=SHARED_POSTGRES, say=say))
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result["total"].items():
            print(f"{name:>18}: {value}")
    return 0 if result["clean"] else 1


if __name__ == "__main__":
    sys.exit(main())
