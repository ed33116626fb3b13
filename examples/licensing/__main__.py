"""``python -m examples.licensing demo|serve|run-roles|contracts``: the scenario, the platform, some roles, its contracts.

    demo        the self-checking scenario (``make demo``); exit 0 only if every outcome was observed
    contracts   ``check`` the contracts against examples/licensing/contracts.lock.json (exit 1 if breaking),
                ``lock`` them again, ``export --out DIR`` (JSON Schema, AsyncAPI), ``docs --out DIR``
    serve       every role in one process, the API on --host/--port (the embedded default needs nothing else)
    run-roles   only the roles named by --roles, e.g. ``--roles relay`` in one process and
                ``--roles consumers,projector,scheduler`` in another, on PostgreSQL and a real broker

The store and broker come from ``--database``/``--broker`` or TIDINGS_DATABASE_URL/TIDINGS_BROKER_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

import click

from examples.licensing.kernel import Settings
from examples.licensing.platform import ROLES, Platform
from tidings.brokers import BrokerError
from tidings.messaging.redaction import redact_url, scrub
from tidings.messaging.personal import MASTER_KEY_ENV, MasterKey, PersonalDataError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m examples.licensing", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def connection(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--database", help="store URL (env TIDINGS_DATABASE_URL); sqlite:///file.db or postgresql://…")
        sub.add_argument("--broker", help="broker URL (env TIDINGS_BROKER_URL); local:, nats://…, redis://…, amqp://…, kafka://…")
        sub.add_argument("--schema", help="PostgreSQL schema of the platform's tables (default: the connection's)")

    contracts = commands.add_parser("contracts", help="check, lock, export or document the platform's contracts")
    contracts.add_argument("action", choices=["check", "lock", "export", "docs"])
    contracts.add_argument("--out", help="directory to write into (export, docs)")

    demo = commands.add_parser("demo", help="run the self-checking scenario")
    demo.add_argument("--database", help="store URL; default: a fresh SQLite file per run (PostgreSQL: a fresh schema per run)")
    demo.add_argument("--broker", help="broker URL; default local: (the store's own log)")
    demo.add_argument("--keep", action="store_true", help="keep the SQLite file or PostgreSQL schema afterwards")
    demo.add_argument("--otel-file", metavar="PATH", help="write the story's OpenTelemetry spans to PATH as OTLP JSON lines (needs tidings[otel])")

    for name, roles_help in (("serve", None), ("run-roles", "comma-separated: " + ",".join(ROLES))):
        sub = commands.add_parser(name, help="run every role in one process" if name == "serve" else "run only some roles")
        connection(sub)
        if roles_help:
            sub.add_argument("--roles", required=True, help=roles_help)
        sub.add_argument("--host", default="127.0.0.1", help="API host (role api)")
        sub.add_argument("--port", type=int, default=8000, help="API port (role api)")
        sub.add_argument("--shards", type=int, default=1, help="shards per consumer (processes sharing one consumer)")
        sub.add_argument("--stall-after", type=float, default=Settings().stall_after, help="seconds before an asset's processing stalls")
    return parser


async def _run_roles(args: argparse.Namespace, roles: list[str]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    settings = Settings(stall_after=args.stall_after, shards=args.shards)
    platform = Platform(args.database, args.broker, settings=settings, schema=args.schema, api_host=args.host, api_port=args.port)
    async with platform:
        if platform.missing:
            for name, reason in platform.missing.items():
                logging.getLogger("examples.licensing").error("context %s is missing: %s", name, reason)
        logging.getLogger("examples.licensing").info(
            "running %s on %s and %s", ", ".join(roles), redact_url(platform.store.url), redact_url(platform.broker_url)
        )
        await platform.run(roles, stop)
    return 0


#: The platform's contract lock, committed with the code and checked by ``make test``.
CONTRACTS_LOCK = Path(__file__).resolve().parent / "contracts.lock.json"
#: What ``tidings contracts --app`` reads for the platform: every context as wired.
CONTRACTS_APP = "examples.licensing.platform:context_parts"


def _contracts(action: str, out: str | None) -> int:
    """Run ``tidings contracts ACTION`` on the platform; its exit status."""
    from tidings.cli import app as tidings

    if action in ("export", "docs") and not out:
        print(f"error: contracts {action} needs --out DIR", file=sys.stderr)
        return 2
    arguments = {
        "check": ["--lock", str(CONTRACTS_LOCK)],
        "lock": ["--out", str(CONTRACTS_LOCK)],
        "export": ["--out", str(out)],
        "docs": ["--out", str(out)],
    }[action]
    try:
        # Not standalone: click returns the exit status (typer.Exit's code) instead of leaving the process.
        status = tidings(["contracts", action, "--app", CONTRACTS_APP, *arguments], prog_name="python -m examples.licensing", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return status if isinstance(status, int) else 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run it; the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "contracts":
        return _contracts(args.action, args.out)
    if args.command == "demo":
        from examples.licensing.scenario import main as demo

        if not os.environ.get(MASTER_KEY_ENV, "").strip():
            # The demo writes a fresh store each run, so a key of its own is enough; a deployment
            # sets TIDINGS_MASTER_KEY once (`tidings subjects new-key`) and keeps it with its backups.
            os.environ[MASTER_KEY_ENV] = MasterKey.generate()
        return demo(args.database, args.broker, keep=args.keep, otel_file=args.otel_file)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    roles = list(ROLES) if args.command == "serve" else [r.strip() for r in args.roles.split(",") if r.strip()]
    urls = (args.database or os.environ.get("TIDINGS_DATABASE_URL"), args.broker or os.environ.get("TIDINGS_BROKER_URL"))
    try:
        return asyncio.run(_run_roles(args, roles))
    except (ValueError, PersonalDataError) as exc:  # a wrong schema, URL or option: no retry can fix it
        print(f"error: {scrub(str(exc), *urls)}", file=sys.stderr)
        return 2
    except (ConnectionError, BrokerError) as exc:  # the database or broker cannot be reached
        print(f"error: {scrub(str(exc), *urls)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
