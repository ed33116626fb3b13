"""The benchmarks refuse to print a rate for a contender that lost or doubled messages."""

from __future__ import annotations

import pytest

from bench.consume import check_counts
from bench.e2e import check_arrivals
from bench.relay import _check
from bench.write import check_limit_rows


def test_a_relay_contender_that_delivered_fewer_rows_than_it_was_given_fails_the_benchmark() -> None:
    _check("ours", 100, delivered=100, in_broker=100)  # right: passes
    with pytest.raises(SystemExit, match="delivered 99 of 100"):
        _check("ours", 100, delivered=99, in_broker=99)
    with pytest.raises(SystemExit, match="the broker holds 101"):
        _check("raw", 100, delivered=100, in_broker=101)
    with pytest.raises(SystemExit, match="3 rows left in the outbox"):
        _check("ours", 100, delivered=100, in_broker=None, backlog=3)


def test_a_consume_contender_that_applied_a_message_twice_or_not_at_all_fails_the_benchmark() -> None:
    check_counts("ours", 50, effects=50, inbox=50)  # right: passes
    with pytest.raises(SystemExit, match="51 effect rows"):
        check_counts("raw", 50, effects=51, inbox=50)
    with pytest.raises(SystemExit, match="49 inbox rows"):
        check_counts("ours", 50, effects=50, inbox=49)


def test_the_pgbench_limit_that_wrote_other_than_one_journal_and_one_outbox_row_per_transaction_fails_the_benchmark() -> None:
    check_limit_rows(40, {"journal_rows": 40, "outbox_rows": 40})  # right: passes
    with pytest.raises(SystemExit, match="39 journal rows"):
        check_limit_rows(40, {"journal_rows": 39, "outbox_rows": 40})
    with pytest.raises(SystemExit, match="41 outbox rows"):
        check_limit_rows(40, {"journal_rows": 40, "outbox_rows": 41})


def test_an_e2e_contender_whose_subscriber_missed_a_message_fails_the_benchmark() -> None:
    check_arrivals("the raw pipeline", 500, 0)  # right: passes
    with pytest.raises(SystemExit, match="the raw pipeline lost 2 of 500"):
        check_arrivals("the raw pipeline", 500, 2)
