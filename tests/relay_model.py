"""A numbered-ticks model for relay and order tests: each key's events carry 1, 2, 3… so order is checkable."""

from __future__ import annotations

from tidings import Application, Command, DomainEvent, IntegrationEvent, StateStoredAggregate, applies
from tidings.app import UnitOfWork
from tidings.messaging import Envelope
from tidings.store import Store


class Ticked(DomainEvent):
    """The ticker advanced; ``padding`` lets a test make the payload as large as it needs."""

    n: int
    padding: str = ""


class Tick(Command):
    """Advance one ticker."""

    ticker_id: str
    padding: str = ""
    fail: bool = False


class TickPublished(IntegrationEvent, name="test.TickPublished"):
    """Public form of a tick, with the ticker and its number."""

    ticker_id: str
    n: int
    padding: str = ""


class Ticker(StateStoredAggregate):
    """Counts its ticks."""

    n: int = 0

    def tick(self, padding: str) -> None:
        self.record(Ticked(n=self.n + 1, padding=padding))

    @applies
    def _ticked(self, event: Ticked) -> None:
        self.n = event.n


def make_ticker_app(store: Store) -> Application:
    """An application whose Tick command publishes one TickPublished per tick (or fails after recording, if asked)."""
    app = Application(store, name="ticks")

    @app.command_handler(Tick)
    async def tick(command: Tick, uow: UnitOfWork) -> None:
        ticker = await uow.find(Ticker, command.ticker_id) or uow.add(Ticker(command.ticker_id))
        ticker.tick(command.padding)
        if command.fail:
            raise RuntimeError("the handler failed after recording")

    @app.translator(Ticked)
    def publish(event: Ticked, envelope: Envelope) -> TickPublished:
        return TickPublished(ticker_id=envelope.aggregate_id or "", n=event.n, padding=event.padding)

    return app
