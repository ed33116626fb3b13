"""What every bounded context of the platform hands the composition root: its parts, ready to run.

This module is shared plumbing, not a context: it imports tidings only, never a context, so every
context may depend on it the way they depend on ``contracts/``. Each context builds its parts in
``<context>/infrastructure/wiring.py`` with ``build(store, settings) -> ContextParts``; the
composition root (``examples/licensing/platform.py``) attaches the broker, runs the consumers,
projections, sagas and relay, and mounts each router under the FastAPI app.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tidings.app import Application
from tidings.runtime import Consumer, Projection, SagaRunner

if TYPE_CHECKING:
    from fastapi import APIRouter

__all__ = ["ContextParts", "Settings"]


@dataclass(frozen=True, slots=True)
class Settings:
    """Knobs of the platform that a scenario or a test turns (times are in seconds)."""

    #: An asset not ready for search this long after its upload raises AssetProcessingStalled.
    stall_after: float = 30.0
    #: How long the metadata extractor pretends to work on one asset (a slow dependency).
    extraction_delay: float = 0.0
    #: Consumer retry policy for the platform's handlers: immediate retries, then delayed ones.
    immediate_retries: int = 2
    delayed_retries: int = 2
    retry_base: float = 0.05
    #: Shards per consumer: 1 in one process; more when several processes share a consumer.
    shards: int = 1


@dataclass(slots=True)
class ContextParts:
    """One bounded context, built on a store: its application and the workers that follow events."""

    #: The context's name, also its Application's name and the ``source`` of its envelopes.
    name: str
    application: Application
    #: Consumers of this context (integration events of others, its own internal topics, its commands).
    consumers: list[Consumer] = field(default_factory=list)
    #: Projections fed from the journal of this context (run by a Projector).
    projections: list[Projection] = field(default_factory=list)
    #: Projections fed from a broker subscription are routed inside one of ``consumers`` instead.
    saga_runner: SagaRunner | None = None
    #: ``router(parts) -> APIRouter`` for the HTTP API, or None for a context with no endpoints.
    router: Callable[[ContextParts], APIRouter] | None = None
    #: Anything else the context wants to expose to the composition root (read-model queries…).
    extras: dict[str, Any] = field(default_factory=dict)
