"""`reach demo` against a real embedded server: a minute's worth of cases, compressed,
with simulated consultants, leaves consistent data — every case decided or still open,
the report counting what happened, the audit trail verifying."""

from __future__ import annotations

import random

from services.demo.cases import synthetic_case
from services.demo.run import DemoOptions, run_demo
from services.embedded import EmbeddedSettings, create_app
from services.shared.domain.nhs_number import is_valid_nhs_number
from services.triage_api.schemas import CaseCreate
from tests.support import JWT_SECRET, running_server


async def test_the_demo_runs_unattended_and_leaves_consistent_data(
    settings: EmbeddedSettings,
) -> None:
    async with running_server(create_app(settings)) as address:
        options = DemoOptions(
            url=f"http://{address}", rate_per_hour=3600 * 2, duration_seconds=8,
            simulate_consultants=True, seed=7, speed=40, jwt_secret=JWT_SECRET,
        )  # fmt: skip
        result = await run_demo(options)
    tally, check = result.tally, result.consistency
    assert len(tally.submitted) >= 5
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
