"""`reach demo` against a real embedded server: a minute's worth of cases, compressed,
with simulated consultants, leaves consistent data — every case decided or still open,
the report counting what happened, the audit trail verifying."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from services.demo.cases import synthetic_case
from services.demo.run import DemoOptions, run_demo
from services.embedded import EmbeddedSettings, create_app
from services.shared.domain.nhs_number import is_valid_nhs_number
from services.triage_api.schemas import CaseCreate
from tests.support import INTERNAL_SECRET, JWT_SECRET, copy_sqlite, running_server


@pytest.fixture
def embedded_default(sqlite_template: Path, tmp_path: Path) -> EmbeddedSettings:
    """The demo's home: the embedded default, on SQLite (PostgreSQL's share of the same
    flows runs in the fault suite and the rest of this one)."""
    return EmbeddedSettings(
        environment="test",
        database_url=copy_sqlite(sqlite_template, tmp_path),
        data_dir=tmp_path,
        jwt_secret=JWT_SECRET,
        internal_secret=INTERNAL_SECRET,
        outbox_poll_seconds=0.05,
    )


async def test_the_demo_runs_a_minute_unattended_and_leaves_consistent_data(
    embedded_default: EmbeddedSettings,
) -> None:
    async with running_server(create_app(embedded_default)) as address:
        # A minute of real time; human pauses ten times shorter, so consultants keep up
        # with a case every six seconds.
        options = DemoOptions(
            url=f"http://{address}", rate_per_hour=600, duration_seconds=60,
            simulate_consultants=True, seed=7, speed=10, jwt_secret=JWT_SECRET,
        )  # fmt: skip
        result = await run_demo(options)
    tally, check = result.tally, result.consistency
    assert len(tally.submitted) >= 4
    assert tally.errors == 0
    assert check["every_case_accounted_for"] is True
    assert check["open_cases_in_queue_or_held"] is True
    assert check["decided"] >= 1, "no simulated consultant advised anything"
    assert check["report_matches"] is True
    assert check["trail_verifies"] is True


def test_synthetic_cases_are_valid_requests_with_a_plausible_mix() -> None:
    rng = random.Random(1)
    cases = [synthetic_case(rng, n) for n in range(300)]
    for case in cases:
        CaseCreate.model_validate(case.body)
        assert is_valid_nhs_number(case.body["patient"]["nhs_number"])
    complaints = {case.body["presenting_complaint"] for case in cases}
    assert {"fall", "chest_pain", "breathing_difficulty"} <= complaints
    falls = sum(case.body["presenting_complaint"] == "fall" for case in cases)
    assert 0.15 < falls / len(cases) < 0.45
    assert 0 < sum(case.deteriorates for case in cases) < len(cases) / 3
