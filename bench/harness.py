"""Shared plumbing for benchmarks: progress on stderr, rate measurement and result output."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Literal

from rich.console import Console
from rich.progress import BarColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress
from rich.table import Table

__all__ = [
    "REQUIRED_KEYS",
    "Progress",
    "Statistic",
    "compare_rates",
    "finish",
    "measure_rate",
    "measure_rate_async",
]

# How measure_rate reduces its batches to one number.
Statistic = Literal["mean", "median"]

# Keys every result must carry so results of different benchmarks can be compared by scripts.
REQUIRED_KEYS = ("name", "ours", "raw", "ratio", "units")

# Rate measurement checks the clock once per batch; aim for batches this long so the check costs nothing.
_TARGET_BATCH_SECONDS = 0.01


class Progress:
    """Progress bars on stderr, so stdout stays clean for the result."""

    def __init__(self, *, enabled: bool = True) -> None:
        """Create the progress display; `enabled=False` hides it (calls still work)."""
        self._console = Console(stderr=True)
        self._rich = RichProgress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:.4g}/{task.total:.4g}"),
            TimeElapsedColumn(),
            console=self._console,
            disable=not enabled,
        )
        self._stack: list[TaskID] = []

    def __enter__(self) -> Progress:
        """Start the live display."""
        self._rich.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the live display."""
        self._rich.stop()

    @contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[Progress]:
        """Show a bar while the `with` block runs; `advance` moves the innermost open bar."""
        task_id = self._rich.add_task(description, total=total)
        self._stack.append(task_id)
        try:
            yield self
        finally:
            self._stack.pop()
            if self._stack:
                # Finished inner steps vanish so the display stays a few lines tall.
                self._rich.remove_task(task_id)
            else:
                # A finished outer step stays, filled, as a record of what ran.
                total_now = self._rich.tasks[self._task_index(task_id)].total
                if total_now is not None:
                    self._rich.update(task_id, completed=total_now)

    def advance(self, n: float = 1) -> None:
        """Advance the innermost open task by `n`."""
        if self._stack:
            self._rich.advance(self._stack[-1], n)

    def log(self, message: str) -> None:
        """Print a line on stderr above the bars."""
        self._console.print(message)

    def _task_index(self, task_id: TaskID) -> int:
        """Position of a task in rich's task list."""
        return next(i for i, t in enumerate(self._rich.tasks) if t.id == task_id)


def measure_rate(
    op: Callable[[], object],
    *,
    seconds: float,
    progress: Progress | None = None,
    description: str = "measuring",
    statistic: Statistic = "mean",
) -> float:
    """Call `op` repeatedly for about `seconds` and return calls per second.

    `statistic="mean"` is total calls over total time (throughput, stalls included);
    `"median"` is the median rate of ~10 ms batches, which shrugs off other processes' bursts.
    """
    batch = 1
    elapsed = 0.0
    samples: list[tuple[int, float]] = []
    with _maybe_task(progress, description, seconds):
        while elapsed < seconds:
            start = time.perf_counter()
            for _ in range(batch):
                op()
            spent = time.perf_counter() - start
            elapsed += spent
            if progress is not None:
                progress.advance(min(spent, max(seconds - elapsed + spent, 0.0)))
            samples.append((batch, spent))
            batch = _next_batch(batch, spent)
    return _summarise(samples, statistic)


async def measure_rate_async(
    op: Callable[[], Awaitable[object]],
    *,
    seconds: float,
    progress: Progress | None = None,
    description: str = "measuring",
    statistic: Statistic = "mean",
) -> float:
    """Await `op()` repeatedly for about `seconds` and return calls per second (see `measure_rate`)."""
    batch = 1
    elapsed = 0.0
    samples: list[tuple[int, float]] = []
    with _maybe_task(progress, description, seconds):
        while elapsed < seconds:
            start = time.perf_counter()
            for _ in range(batch):
                await op()
            spent = time.perf_counter() - start
            elapsed += spent
            if progress is not None:
                progress.advance(min(spent, max(seconds - elapsed + spent, 0.0)))
            samples.append((batch, spent))
            batch = _next_batch(batch, spent)
    return _summarise(samples, statistic)


def compare_rates(
    ops: dict[str, Callable[[], object]],
    *,
    seconds: float,
    progress: Progress | None = None,
    description: str = "comparing",
    slice_seconds: float = 0.05,
) -> dict[str, float]:
    """Time several ops in round-robin slices and return each one's median calls per second.

    Interleaving matters on shared machines: a slow phase of the host lands on every
    contender instead of on whichever happened to run then, so ratios stay stable.
    `seconds` is the time given to each op.
    """
    slices = max(1, round(seconds / slice_seconds))
    rates: dict[str, list[float]] = {label: [] for label in ops}
    with _maybe_task(progress, description, slices * len(ops)):
        for _ in range(slices):
            for label, op in ops.items():
                rates[label].append(measure_rate(op, seconds=slice_seconds))
                if progress is not None:
                    progress.advance(1)
    return {label: statistics.median(values) for label, values in rates.items()}


def finish(result: dict[str, Any], as_json: bool) -> None:
    """Complete `result` (ratio) and print it: one JSON line last on stdout, or a table."""
    result = dict(result)
    if "ratio" not in result and _is_number(result.get("ours")) and _is_number(result.get("raw")):
        result["ratio"] = result["ours"] / result["raw"] if result["raw"] else None
    missing = [key for key in REQUIRED_KEYS if key not in result]
    if missing:
        raise ValueError(f"benchmark result lacks {', '.join(missing)}")
    if as_json:
        # One line, printed last, so callers can take `tail -n 1` of stdout and parse it.
        print(json.dumps(result, default=str, separators=(",", ":")), flush=True)
        return
    console = Console()
    if not console.is_terminal:
        # Piped output has no width to fit; rich would assume 80 columns and truncate names.
        console = Console(width=160)
    summary = Table(title=f"bench {result['name']}", header_style="bold")
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    grids: list[tuple[str, dict[str, dict[str, Any]]]] = []
    for key, value in result.items():
        if _is_grid(value):
            grids.append((key, value))
        elif isinstance(value, dict):
            for sub_key, sub_value in _flatten(value, f"{key}."):
                summary.add_row(sub_key, _format(sub_value))
        else:
            summary.add_row(key, _format(value))
    console.print(summary)
    # A dict of same-shaped dicts (e.g. per-library figures) reads best as its own grid.
    for key, grid in grids:
        columns = list(next(iter(grid.values())))
        table = Table(title=key, header_style="bold")
        table.add_column("")
        for column in columns:
            table.add_column(column, justify="right")
        for row, cells in grid.items():
            table.add_row(row, *(_format(cells.get(column)) for column in columns))
        console.print(table)


@contextmanager
def _maybe_task(progress: Progress | None, description: str, total: float) -> Iterator[None]:
    """Open a progress task only when a progress display was given."""
    if progress is None:
        yield
        return
    with progress.task(description, total=total):
        yield


def _summarise(samples: list[tuple[int, float]], statistic: Statistic) -> float:
    """Reduce (calls, seconds) batches to one rate."""
    if statistic == "median":
        # The first batches are calibration (1, 10, ... calls) and too short to time well.
        timed = [calls / spent for calls, spent in samples if spent > 0 and spent >= _TARGET_BATCH_SECONDS / 4]
        if timed:
            return statistics.median(timed)
    calls = sum(c for c, _ in samples)
    spent = sum(t for _, t in samples)
    return calls / spent if spent > 0 else float("inf")


def _next_batch(batch: int, spent: float) -> int:
    """Grow or shrink the batch towards the target length, never below one call."""
    if spent <= 0:
        return batch * 10
    # Damp the change so one slow batch (GC, scheduler) does not swing the size wildly.
    factor = min(max(_TARGET_BATCH_SECONDS / spent, 0.5), 10.0)
    return max(1, int(batch * factor))


def _is_grid(value: object) -> bool:
    """True for a non-empty dict whose values are all flat dicts with the same keys."""
    if not isinstance(value, dict) or not value:
        return False
    rows = list(value.values())
    if not all(isinstance(row, dict) for row in rows):
        return False
    keys = list(rows[0])
    return all(list(row) == keys and not any(isinstance(v, dict) for v in row.values()) for row in rows)


def _is_number(value: object) -> bool:
    """True for ints and floats but not bools."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _flatten(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Yield dotted keys for nested dicts so the table shows every figure."""
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value


def _format(value: Any) -> str:
    """Render numbers readably: thousands separators, a few significant digits for ratios."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return str(value)
