"""The fault plan: which process or server is hit when, drawn from ``random.Random(seed)`` alone.

The plan is data, made before anything runs, so the same seed gives the same plan (the timing of
the processes it hits is the machine's, and is not reproducible; the plan is).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

SCENARIOS = (
    "crash-writer",
    "crash-relay",
    "crash-consumer",
    "broker-restart",
    "db-restart",
    "duplicate-and-reorder",
    "poison",
    "fuzz",
)

#: The kinds of poison, injected at the broker (parked by the consumer) or through the API (refused).
BROKER_POISON = ("malformed-json", "unknown-type", "incompatible-version", "oversized", "wrong-tenant", "broken-envelope")
API_POISON = ("blank-key", "wrong-field-type", "unknown-command", "oversized")


@dataclass(frozen=True, slots=True)
class Fault:
    """One planned fault: at ``at`` seconds into the workload, do ``action`` to ``target`` (an index)."""

    at: float
    action: str
    target: int = 0
    #: Seconds the victim stays down before it is started again (or the restart mode, for the database).
    pause: float = 0.0
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Shape:
    """How big a run is: how long the workload runs and how many processes of each kind it has."""

    duration: float
    writers: int
    rate: float
    keys_per_writer: int
    relays: int
    consumers: int
    shards: int


@dataclass(frozen=True, slots=True)
class Plan:
    """A scenario's shape and its faults, in time order."""

    scenario: str
    seed: int
    shape: Shape
    faults: tuple[Fault, ...] = field(default_factory=tuple)
    chaos_seed: int | None = None

    def as_dict(self) -> dict[str, object]:
        """The plan as plain data (what the reproducibility test compares)."""
        return asdict(self)


def shape_for(scenario: str, scale: float, long: bool) -> Shape:
    """The size of a run: short by default (6 s of writing), ``scale`` times longer, or minutes with ``long``."""
    duration = 150.0 if long else 6.0 * scale
    rate = 40.0 if long else 25.0
    relays = 3 if scenario == "crash-relay" else 2 if long else 1
    consumers = 2 if scenario == "crash-consumer" or long else 1
    return Shape(duration=duration, writers=3 if long else 2, rate=rate, keys_per_writer=6, relays=relays,
                 consumers=consumers, shards=consumers)  # fmt: skip


#: The harshest fault of each scenario with server faults, as (action, detail): every plan has it at least once.
HARSHEST = {"broker-restart": ("restart-broker", "kill"), "db-restart": ("restart-database", "immediate")}


def _with_harshest(scenario: str, faults: list[Fault], rng: random.Random) -> list[Fault]:
    """Make sure a short plan cannot leave out its scenario's harshest fault (a short run draws only a few)."""
    if scenario not in HARSHEST or not faults:
        return faults
    action, detail = HARSHEST[scenario]
    if any(f.action == action and f.detail == detail for f in faults):
        return faults
    index = rng.randrange(len(faults))
    victim = faults[index]
    faults[index] = Fault(victim.at, victim.action, victim.target, victim.pause, detail)
    return faults


def make_plan(scenario: str, seed: int, scale: float = 1.0, long: bool = False) -> Plan:
    """The plan for ``scenario``: every random choice comes from ``random.Random(seed)``, in a fixed order."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    rng = random.Random(seed)
    shape = shape_for(scenario, scale, long)
    span = shape.duration

    def moments(count: int) -> list[float]:
        # Faults fall in the workload's middle 80 %, so each one hits a system that is busy.
        return sorted(round(rng.uniform(0.1 * span, 0.9 * span), 3) for _ in range(count))

    faults: list[Fault] = []
    chaos_seed = None
    if scenario in ("crash-writer", "crash-relay", "crash-consumer"):
        role = scenario.removeprefix("crash-")
        count = {"writer": shape.writers, "relay": shape.relays, "consumer": shape.consumers}[role]
        for at in moments(max(3, int(span / 2.5))):
            faults.append(Fault(at, f"kill-{role}", rng.randrange(count), round(rng.uniform(0.1, 1.5), 3)))
    elif scenario == "broker-restart":
        # "kill" is a SIGKILL of the server (no flush), "term" a graceful stop; the harness downgrades a
        # kill to a stop for a server that promises durability only across a graceful stop (servers.py).
        for at in moments(max(2, int(span / 6))):
            faults.append(Fault(at, "restart-broker", 0, round(rng.uniform(0.2, 2.0), 3), rng.choice(("term", "kill"))))
    elif scenario == "db-restart":
        for at in moments(max(2, int(span / 6))):
            faults.append(Fault(at, "restart-database", 0, 0.0, rng.choice(("fast", "immediate"))))
    elif scenario == "duplicate-and-reorder":
        chaos_seed = rng.randrange(2**31)
    elif scenario == "poison":
        kinds = [("broker", kind) for kind in BROKER_POISON] + [("api", kind) for kind in API_POISON]
        rounds = max(1, int(span / 8))
        for _ in range(rounds):
            for where, kind in kinds:
                faults.append(Fault(round(rng.uniform(0.1 * span, 0.9 * span), 3), f"poison-{where}", 0, 0.0, kind))
        faults.sort(key=lambda fault: fault.at)
    faults = _with_harshest(scenario, faults, rng)
    return Plan(scenario, seed, shape, tuple(faults), chaos_seed)
