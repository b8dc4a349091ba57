from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.shared.domain.news2 import News2Result
from services.shared.domain.priority import (
    LOWEST_PRIORITY,
    aged_priority,
    ageing_bounds,
    case_priority,
)
from services.shared.domain.vocabulary import CallCategory, News2Risk, RiskFlag


def result(score: int, risk: News2Risk, red_flag: bool = False) -> News2Result:
    return News2Result(score=score, risk=risk, red_flag=red_flag, scale=1)


class TestCasePriority:
    @pytest.mark.parametrize(
        ("news2", "category", "flags", "expected"),
        [
            (result(8, News2Risk.HIGH), CallCategory.C3, [], 1),
            (result(5, News2Risk.MEDIUM), CallCategory.C4, [], 2),
            (result(3, News2Risk.LOW_MEDIUM, True), CallCategory.C4, [], 2),
            (result(1, News2Risk.LOW), CallCategory.C4, [], 4),
            (result(1, News2Risk.LOW), CallCategory.C2, [], 2),
            (result(1, News2Risk.LOW), CallCategory.C1, [], 1),
            (result(0, News2Risk.LOW), CallCategory.C4, [RiskFlag.CANNOT_WALK], 3),
            (None, CallCategory.C4, [], 3),
        ],
    )
    def test_most_urgent_signal_wins(
        self,
        news2: News2Result | None,
        category: CallCategory,
        flags: list[RiskFlag],
        expected: int,
    ) -> None:
        assert case_priority(news2=news2, call_category=category, risk_flags=flags) == expected


class TestAgeing:
    def test_waiting_raises_priority_one_level_per_step_never_above_one(self) -> None:
        assert aged_priority(4, waited_seconds=0, ageing_step_seconds=300) == 4
        assert aged_priority(4, waited_seconds=299, ageing_step_seconds=300) == 4
        assert aged_priority(4, waited_seconds=300, ageing_step_seconds=300) == 3
        assert aged_priority(4, waited_seconds=3600, ageing_step_seconds=300) == 1

    def test_no_step_means_no_ageing(self) -> None:
        assert aged_priority(3, waited_seconds=10_000, ageing_step_seconds=0) == 3


class TestAgeingBounds:
    """The bounds a database orders by say what `aged_priority` says."""

    NOW = datetime(2026, 12, 5, 18, 0, tzinfo=UTC)

    @pytest.mark.parametrize("waited", [0, 299, 300, 301, 599, 600, 900, 901, 3600])
    def test_a_case_has_aged_as_many_steps_as_bounds_it_was_created_by(self, waited: int) -> None:
        created_at = self.NOW - timedelta(seconds=waited)
        bounds = ageing_bounds(self.NOW, ageing_step_seconds=300)
        steps = sum(created_at <= bound for bound in bounds)
        assert LOWEST_PRIORITY - steps == aged_priority(
            LOWEST_PRIORITY, waited_seconds=waited, ageing_step_seconds=300
        )

    @pytest.mark.parametrize("step", [0, float("inf"), 1e12])
    def test_no_step_or_one_beyond_the_calendar_ages_no_case(self, step: float) -> None:
        earliest_case = datetime(1, 1, 2, tzinfo=UTC)
        assert all(
            earliest_case > bound for bound in ageing_bounds(self.NOW, ageing_step_seconds=step)
        )
        assert aged_priority(4, waited_seconds=1e9, ageing_step_seconds=step) == 4
