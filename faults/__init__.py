"""The fault harness: runs a real workload, breaks it on a seeded plan, drains it and counts what went wrong.

``python -m faults SCENARIO [--seed N] [--scale N] [--long] [--broker nats|rabbitmq|redis] --json``;
see faults/__main__.py for the scenarios and docs/decisions/0011-fault-harness.md for the invariants.
"""
