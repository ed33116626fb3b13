"""What every long-running command (relay, consume, projections run, scheduler) does around its worker."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from tidings.messaging.redaction import redact_url, scrub
from tidings.store.errors import PermanentDatabaseError, is_permanent

if TYPE_CHECKING:
    from tidings.brokers.base import Broker
    from tidings.store import Store

__all__ = ["broker_when_up", "stop_on_signals"]


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM, so the worker stops cleanly (releasing locks, settling acks)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def broker_when_up(url: str | None, store: Store, stop: asyncio.Event, console: Console) -> Broker | None:
    """The broker at ``url``, waited for if it is down (it may start after us); None if stopped first.

    What no wait can fix stops the worker at once: a missing client library (ValueError says which
    extra to install), a wrong URL or option (BrokerConfigurationError, also a ValueError), or a store
    that refuses the local broker for good (PermanentDatabaseError, e.g. not migrated).
    """
    from tidings.brokers import open_broker

    where = url or os.environ.get("TIDINGS_BROKER_URL")
    while not stop.is_set():
        try:
            return await open_broker(url, store=store)
        except RuntimeError as exc:  # the broker's client library is not installed
            raise ValueError(scrub(str(exc), where)) from None
        except ValueError as exc:
            raise ValueError(scrub(str(exc), where)) from None
        except Exception as exc:
            if is_permanent(exc):  # the local broker's log table is missing: no wait will create it
                raise PermanentDatabaseError(f"broker {redact_url(where) if where else 'local:'}", exc) from exc
            console.print(f"[yellow]broker unavailable[/yellow] ({escape(scrub(str(exc), where))}); retrying in 2 s")
            try:
                await asyncio.wait_for(stop.wait(), 2)
            except TimeoutError:
                pass
    return None
