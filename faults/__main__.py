"""``python -m faults SCENARIO``: run one scenario and print its figures (one JSON line last on stdout).

Scenarios: crash-writer, crash-relay, crash-consumer (kill -9 and start again), broker-restart (a
private NATS, RabbitMQ or Redis server stopped and started), db-restart (a private PostgreSQL
cluster restarted fast or immediate), duplicate-and-reorder (deliveries shuffled across keys and
some delivered twice), poison (bad messages at the broker, bad commands through the API).
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
    parser = argparse.ArgumentParser(prog="python -m faults", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--seed", type=int, default=1, help="seeds the fault plan: the same seed, the same plan")
    parser.add_argument("--scale", type=float, default=1.0, help="the short form's workload duration times this")
    parser.add_argument("--long", action="store_true", help="minutes of workload and thousands of commands")
    parser.add_argument("--broker", choices=("nats", "rabbitmq", "redis"), default="nats")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line (always the last stdout line)")
    parser.add_argument("--plan", action="store_true", help="print the fault plan and exit without running it")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory and schema for inspection")
    args = parser.parse_args(argv)

    plan = make_plan(args.scenario, args.seed, args.scale, args.long)
    if args.plan:
        print(json.dumps(plan.as_dict()))
        return 0
    result = asyncio.run(Run(plan, broker_name=args.broker, keep=args.keep).execute())
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(f"{name:>18}: {value}")
    held = (
        result["lost"] == result["phantom"] == result["duplicate_effects"] == result["order_violations"] == 0
        and result["parked"] + result["refused"] == result["poison_injected"]
        and result["died"] == 0
    )
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())
