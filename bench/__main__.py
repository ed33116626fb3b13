"""Command line: `python -m bench NAME [options] [--json]` runs one benchmark."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import pkgutil
import sys
from types import ModuleType

import bench
from bench.harness import Progress, finish

# Modules of the package that are plumbing, not benchmarks.
_NOT_BENCHMARKS = {"__main__", "harness"}


def discover() -> dict[str, ModuleType]:
    """Import every module of the bench package that defines NAME, keyed by that name."""
    found: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules(bench.__path__):
        if info.name in _NOT_BENCHMARKS or info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"bench.{info.name}")
        except ImportError as exc:
            # A benchmark whose optional dependency is missing must not stop the others.
            print(f"bench: skipping {info.name}: {exc}", file=sys.stderr)
            continue
        name = getattr(module, "NAME", None)
        if isinstance(name, str):
            found[name] = module
    return found


def build_parser(benchmarks: dict[str, ModuleType]) -> argparse.ArgumentParser:
    """One subcommand per benchmark, each with its own options plus --json."""
    parser = argparse.ArgumentParser(prog="python -m bench", description="Run a tidings benchmark.")
    sub = parser.add_subparsers(dest="benchmark", metavar="NAME", required=True)
    for name, module in sorted(benchmarks.items()):
        doc = (module.__doc__ or "").strip().splitlines()
        summary = doc[0] if doc else name
        child = sub.add_parser(name, help=summary, description=summary)
        child.add_argument("--json", action="store_true", help="print the result as one JSON line on stdout")
        module.add_arguments(child)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the chosen benchmark and print its result."""
    benchmarks = discover()
    args = build_parser(benchmarks).parse_args(argv)
    module = benchmarks[args.benchmark]
    with Progress() as progress:
        result = asyncio.run(module.run(args, progress))
    result.setdefault("name", module.NAME)
    finish(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
