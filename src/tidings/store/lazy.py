"""A transaction begun only when a statement needs one: what a unit of work runs inside.

A command usually reads a few rows and then commits everything in one statement (one round trip
on PostgreSQL, docs/decisions/0003), so it must not pay for BEGIN and COMMIT. But SQL a handler
runs itself (``uow.execute``, or ``store.run`` called from a domain-bus handler) must commit with
the command or not at all: a statement that committed on its own would survive a command that
then raised. So the application opens a lazy transaction around each command: the store's own
reads and the final commit take their fast path while nothing else ran, and the first other
statement begins a real transaction, which the command's commit then joins (decision 0014).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

__all__ = ["LazyTransaction", "NoTransaction"]


class NoTransaction(RuntimeError):
    """A call that needs an open transaction was made outside one."""


class LazyTransaction:
    """A transaction that begins at the first ``join()`` and ends with the block that created it."""

    __slots__ = ("_begin", "_open", "_owner")

    def __init__(self, begin: Callable[[], AbstractAsyncContextManager[Any]]) -> None:
        self._begin = begin
        self._open: AbstractAsyncContextManager[Any] | None = None
        # A task the command's handler starts inherits the context variable that points here,
        # but runs concurrently with the command: it must not begin (or end) its transaction.
        self._owner = asyncio.current_task()

    @property
    def here(self) -> bool:
        """Whether the running task is the one whose block this is."""
        return self._owner is asyncio.current_task()

    @property
    def waiting(self) -> bool:
        """Whether a statement of the running task would begin the transaction now."""
        return self._open is None and self._owner is asyncio.current_task()

    @property
    def begun(self) -> bool:
        """Whether a statement has begun the transaction."""
        return self._open is not None

    async def join(self) -> None:
        """Begin the transaction if no statement has yet."""
        if self._open is None:
            transaction = self._begin()
            await transaction.__aenter__()
            self._open = transaction

    async def end(self, error: BaseException | None) -> None:
        """Commit what was begun, or roll it back when the block raised ``error``."""
        transaction, self._open = self._open, None
        if transaction is None:
            return
        if error is None:
            await transaction.__aexit__(None, None, None)
        else:
            await transaction.__aexit__(type(error), error, error.__traceback__)
