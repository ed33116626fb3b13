"""The test kit for users of tidings: specifications of aggregates, a harness with no servers, pytest fixtures.

- ``scenario`` — start a given/when/then specification of one aggregate.
- ``Scenario`` — the "given" half: past events (or saved state) of the aggregate.
- ``Outcome`` — the "then" half: ``then``, ``then_nothing``, ``then_raises``, ``then_state``.
- ``Harness`` — one bounded context's application on an in-memory store; handle commands, read events and publications.
- ``AppFactory`` — what the harness builds an application with: ``build(store) -> Application``.
- ``HarnessFactory`` — the type of the ``tidings_harness`` fixture.
- ``drain`` — run the relay and consumers of a test until nothing is pending (the ``local:`` broker).
- ``saga_scenario`` — start a given/when/then specification of one saga (``SagaScenario`` → ``SagaThen``).

The fixtures ``tidings_sqlite_store``, ``tidings_postgres_store`` and ``tidings_harness`` come from
the pytest plugin installed with tidings (:mod:`tidings.testing.plugin`); nothing to import.
"""

from tidings.testing.aggregates import Outcome, Scenario, scenario
from tidings.testing.drain import drain
from tidings.testing.harness import AppFactory, Harness, HarnessFactory
from tidings.testing.sagas import SagaScenario, SagaThen, saga_scenario

__all__ = [
    "AppFactory",
    "Harness",
    "HarnessFactory",
    "Outcome",
    "SagaScenario",
    "SagaThen",
    "Scenario",
    "drain",
    "saga_scenario",
    "scenario",
]
