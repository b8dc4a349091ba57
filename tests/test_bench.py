"""The benchmarks that call reach's own code in process still run against it.

`make bench` stops at the first script that cannot run. The scripts that drive a served
reach go through the public API, which the rest of the suite holds still; a script that
calls the services' functions with stand-ins (`bench.statement_costs`) can fall behind
them silently, as it did when routing's look began reading a setting its stand-in
lacked. What the benchmarks measure is never asserted here (see `bench/RESULTS.md`).
"""

from __future__ import annotations

from sqlalchemy.engine import make_url

from bench.statement_costs import measure

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
