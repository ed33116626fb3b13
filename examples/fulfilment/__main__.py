"""``python -m examples.fulfilment demo``: the self-checking migration story (exit 0 only if every outcome was observed)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run it; the exit status."""
    parser = argparse.ArgumentParser(prog="python -m examples.fulfilment", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the self-checking migration story")
    demo.add_argument("--database", help="a fresh PostgreSQL database with wal_level=logical; default: a private cluster started for the run")
    demo.add_argument("--broker", help="broker URL: local: (default) or nats://127.0.0.1:4222 …")
    args = parser.parse_args(argv)
    from examples.fulfilment.scenario import main as demo_main

    return demo_main(args.database, args.broker)


if __name__ == "__main__":
    sys.exit(main())
