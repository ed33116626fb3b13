"""Two commands saving the same two aggregates in opposite orders deadlock in PostgreSQL; that is a conflict like any other."""

from __future__ import annotations

import asyncio

from relay_model import Tick, Ticker, make_ticker_app
from support import StoreFactory
from tidings import Application, Command, ConcurrencyError
from tidings.app import UnitOfWork


class TickBoth(Command):
    """Tick two tickers, in the order given."""

    first: str
    second: str


async def test_opposite_order_saves_end_in_one_commit_and_one_concurrency_error(postgres_store_factory: StoreFactory) -> None:
    # Given two tickers and two applications (two processes) whose handlers wait until both have loaded them
    stores = [await postgres_store_factory(), await postgres_store_factory()]
    both_loaded = asyncio.Barrier(2)
    apps = []
    for store in stores:
        app = Application(store, name="ticks")

        @app.command_handler(TickBoth)
        async def tick_both(command: TickBoth, uow: UnitOfWork) -> None:
            first = await uow.find(Ticker, command.first) or uow.add(Ticker(command.first))
            second = await uow.find(Ticker, command.second) or uow.add(Ticker(command.second))
            await both_loaded.wait()
            first.tick("")
            second.tick("")

        apps.append(app)
    setup = make_ticker_app(stores[0])
    await setup.handle(Tick(ticker_id="x"))
    await setup.handle(Tick(ticker_id="y"))
    # A slow database (as under load): each state row takes 0.3 s, so the two statements overlap
    # and each holds one row the other needs.
    await stores[0].execute(
        "CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.3); RETURN NEW; END $$"
    )  # type: ignore[attr-defined]
    await stores[0].execute(
        "CREATE TRIGGER slow_state BEFORE UPDATE ON tidings_aggregate_state FOR EACH ROW EXECUTE FUNCTION slow_row()"
    )  # type: ignore[attr-defined]

    # When one ticks x then y while the other ticks y then x
    results = await asyncio.gather(
        apps[0].handle(TickBoth(first="x", second="y")),
        apps[1].handle(TickBoth(first="y", second="x")),
        return_exceptions=True,
    )

    # Then one committed and the other got a ConcurrencyError (never a raw database error)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1, results
    assert isinstance(errors[0], ConcurrencyError), repr(errors[0])
    x = await apps[0].load(Ticker, "x")
    y = await apps[0].load(Ticker, "y")
    assert (x.n, y.n) == (2, 2)
