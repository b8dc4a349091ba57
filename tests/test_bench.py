"""The benchmarks that call reach's own code in process still run against it, and the
fan-out benchmark's split of its ratio by size says what it should.

`make bench` stops at the first script that cannot run. The scripts that drive a served
reach go through the public API, which the rest of the suite holds still; a script that
calls the services' functions with stand-ins (`bench.statement_costs`) can fall behind
them silently, as it did when routing's look began reading a setting its stand-in
lacked. What the benchmarks measure is never asserted here (see `bench/RESULTS.md`).
"""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from bench.statement_costs import measure
from bench.ws_fanout import describe_split, split_by_size

EVERY_DATABASE = {"a submitted case", "an offer", "a cancellation"}
POSTGRESQL_ONLY = {
    "outbox and wake-ups",
    "a batch's first rows",
    "a batch of new cases",
    "a batch written at its commit",
    "a routing look",
    "a posting pass",
}


class TestStatementCosts:
    async def test_every_way_of_every_step_runs(self, database_url: str) -> None:
        results = await measure(database_url, steps=2, rounds=1)

        measured = {
            label.removesuffix(", before") for label in results if label.endswith(", before")
        }
        on_postgresql = make_url(database_url).get_backend_name() == "postgresql"
        assert measured == (EVERY_DATABASE | POSTGRESQL_ONLY if on_postgresql else EVERY_DATABASE)
        for step in measured:
            # The warm-up round is not kept: one round, one figure for each way.
            assert len(results[f"{step}, before"]) == 1
            assert len(results[f"{step}, now"]) == 1


class TestFanOutSplitBySize:
    """`ws_fanout` splits reach's ratio into a socket's share and a change's, from two
    sizes' median rounds."""

    def test_recovers_the_two_parts_from_two_sizes(self) -> None:
        # A socket's send 1.25x the baseline's, and 144 baseline messages' worth a change.
        split = split_by_size((400, 1.25 + 144 / 400), (1600, 1.25 + 144 / 1600))

        assert split.per_socket == pytest.approx(1.25)
        assert split.per_change == pytest.approx(144)
        assert split.ratio_at(800) == pytest.approx(1.43)
        assert split.fewest_within(1.5) == pytest.approx(576)

    def test_a_socket_dearer_than_the_target_is_never_within_it(self) -> None:
        split = split_by_size((400, 1.9), (1600, 1.6))

        assert split.per_socket == pytest.approx(1.5)
        assert split.fewest_within(1.5) is None
        assert split_by_size((400, 2.0), (1600, 1.7)).fewest_within(1.5) is None

    def test_no_cost_a_change_is_within_at_any_size(self) -> None:
        assert split_by_size((400, 1.3), (1600, 1.3)).fewest_within(1.5) == 0

    def test_says_the_split_and_where_the_target_is_met(self) -> None:
        said = describe_split((400, 1.61), (1600, 1.34), base_us=10.8)

        assert "about 1.25 + 144 / dashboards" in said
        assert "about 1.6 ms" in said
        assert "within 1.5x from about 576 dashboards" in said

    def test_needs_two_sizes_the_fewer_first(self) -> None:
        with pytest.raises(ValueError, match="the fewer dashboards first"):
            split_by_size((1600, 1.34), (400, 1.61))

    def test_says_when_the_sizes_show_no_cost_a_change(self) -> None:
        said = describe_split((400, 1.3), (1600, 1.4), base_us=10.8)

        assert "about 1.43 - 53 / dashboards" in said
        assert "no cost once a change shows between these sizes" in said
        assert "within 1.5x at any number" in said
