"""The benchmarks that call reach's own code in process, or serve it with instruments
hooked into its internals, still run against it; and the fan-out benchmark's split of its
ratio by size says what it should.

`make bench` stops at the first script that cannot run. The scripts that drive a served
reach go through the public API, which the rest of the suite holds still; a script that
calls the services' functions with stand-ins (`bench.statement_costs`) can fall behind
them silently, as it did when routing's look began reading a setting its stand-in
lacked. What the benchmarks measure is never asserted here (see `bench/RESULTS.md`).
"""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from bench.case_parts import profiled_parts
from bench.delivery_passes import traced_passes
from bench.fanout_parts import FEED
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


def _backend(database_url: str) -> str:
    return make_url(database_url).get_backend_name()


class TestStatementCosts:
    async def test_every_way_of_every_step_runs(self, database_url: str) -> None:
        results = await measure(database_url, steps=2, rounds=1)

        measured = {
            label.removesuffix(", before") for label in results if label.endswith(", before")
        }
        on_postgresql = _backend(database_url) == "postgresql"
        assert measured == (EVERY_DATABASE | POSTGRESQL_ONLY if on_postgresql else EVERY_DATABASE)
        for step in measured:
            # The warm-up round is not kept: one round, one figure for each way.
            assert len(results[f"{step}, before"]) == 1
            assert len(results[f"{step}, now"]) == 1


class TestInstrumentedServers:
    """The servers that time reach from inside (`bench.traced_server`, `bench.parts_server`)
    wrap and name its internals: an outbox pass, a lane's task, a task's name. Renamed in
    reach, they would not fail but measure nothing, or charge everything to "the rest".
    Each serves the routing benchmark's load briefly (a second of cases after its warm-up)."""

    def test_delivery_passes_are_traced_statement_by_statement(self, database_url: str) -> None:
        passes, _ = traced_passes(_backend(database_url), database_url, rate=4, seconds=1)

        # Every pass claims from its service's outbox, then takes the events into the
        # inbox its lane serves: the new cases' hand-over to the router, the router's
        # news back to the crews, and audit's trail from each.
        begins = {
            ("triage_api", "prompt"): ["CLAIM triage_outbox", "INSERT consult_inbox"],
            ("consult_router", "prompt"): ["CLAIM consult_outbox", "INSERT triage_inbox"],
            ("triage_api", "deferred"): ["CLAIM triage_outbox", "INSERT audit_inbox"],
            ("consult_router", "deferred"): ["CLAIM consult_outbox", "INSERT audit_inbox"],
        }
        for traced in passes:
            claim, taken_in = begins[traced["service"], traced["lane"]]
            assert traced["statements"][0] == claim
            assert len(traced["timings"]) == len(traced["statements"])
            # A pass that failed is traced too, and one run again with savepoints has
            # them between its statements: the rest holds for those that committed.
            if "commit sent" in traced["marks"]:
                assert taken_in in traced["statements"]
                assert "connection returned" in traced["marks"]
        committed = {
            (traced["service"], traced["lane"])
            for traced in passes
            if "commit sent" in traced["marks"]
        }
        assert committed == set(begins)

    def test_the_event_loops_cpu_is_charged_to_reachs_parts(self, database_url: str) -> None:
        parts, _ = profiled_parts(_backend(database_url), database_url, rate=4, seconds=1)

        assert parts is not None
        charged = set(parts["cpu"])
        assert {
            "POST /v1/cases",
            "outbox delivery from triage_api (prompt)",
            "outbox delivery from consult_router (prompt)",
            "outbox delivery from triage_api (deferred)",
            "consult_router-routing",
            FEED,  # `bench.fanout_parts` finds the dashboards' broadcast by this name
            "event loop: I/O and other callbacks",
        } <= charged
        assert parts["process_cpu"] > 0


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
