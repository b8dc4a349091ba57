"""NEWS2 against the RCP chart: every band edge of every parameter, both SpO2 scales."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.shared.domain import news2
from services.shared.domain.news2 import Observations, score_news2
from services.shared.domain.vocabulary import Consciousness, News2Risk, RiskFlag

NORMAL = Observations(
    respiration_rate=16,
    spo2=97,
    spo2_scale=1,
    on_oxygen=False,
    systolic_bp=120,
    pulse=70,
    consciousness=Consciousness.A,
    temperature=37.0,
)


class TestRespirationRate:
    @pytest.mark.parametrize(
        ("rate", "points"),
        [(8, 3), (9, 1), (11, 1), (12, 0), (20, 0), (21, 2), (24, 2), (25, 3)],
    )
    def test_band_edges(self, rate: int, points: int) -> None:
        assert news2.respiration_points(rate) == points


class TestSpo2Scale1:
    @pytest.mark.parametrize(
        ("spo2", "points"), [(91, 3), (92, 2), (93, 2), (94, 1), (95, 1), (96, 0), (100, 0)]
    )
    def test_band_edges(self, spo2: int, points: int) -> None:
        assert news2.spo2_scale1_points(spo2) == points


class TestSpo2Scale2:
    @pytest.mark.parametrize(
        ("spo2", "on_oxygen", "points"),
        [
            (83, True, 3),
            (84, True, 2),
            (85, False, 2),
            (86, True, 1),
            (87, False, 1),
            (88, True, 0),
            (92, True, 0),
            (93, False, 0),
            (100, False, 0),
            (93, True, 1),
            (94, True, 1),
            (95, True, 2),
            (96, True, 2),
            (97, True, 3),
        ],
    )
    def test_band_edges(self, spo2: int, on_oxygen: bool, points: int) -> None:
        assert news2.spo2_scale2_points(spo2, on_oxygen=on_oxygen) == points

    def test_above_92_without_knowing_oxygen_has_no_points(self) -> None:
        assert news2.spo2_scale2_points(95, on_oxygen=None) is None

    def test_scale_2_is_used_only_when_asked(self) -> None:
        low_on_scale_1 = replace(NORMAL, spo2=90)
        assert news2.parameter_points(low_on_scale_1)[news2.SPO2] == 3
        assert news2.parameter_points(replace(low_on_scale_1, spo2_scale=2))[news2.SPO2] == 0


class TestOtherParameters:
    @pytest.mark.parametrize(("on_oxygen", "points"), [(True, 2), (False, 0)])
    def test_air_or_oxygen(self, on_oxygen: bool, points: int) -> None:
        assert news2.oxygen_points(on_oxygen) == points

    @pytest.mark.parametrize(
        ("sbp", "points"),
        [(90, 3), (91, 2), (100, 2), (101, 1), (110, 1), (111, 0), (219, 0), (220, 3)],
    )
    def test_systolic_bp(self, sbp: int, points: int) -> None:
        assert news2.systolic_bp_points(sbp) == points

    @pytest.mark.parametrize(
        ("pulse", "points"),
        [
            (40, 3),
            (41, 1),
            (50, 1),
            (51, 0),
            (90, 0),
            (91, 1),
            (110, 1),
            (111, 2),
            (130, 2),
            (131, 3),
        ],
    )
    def test_pulse(self, pulse: int, points: int) -> None:
        assert news2.pulse_points(pulse) == points

    @pytest.mark.parametrize(
        ("level", "points"),
        [
            (Consciousness.A, 0),
            (Consciousness.C, 3),
            (Consciousness.V, 3),
            (Consciousness.P, 3),
            (Consciousness.U, 3),
        ],
    )
    def test_consciousness(self, level: Consciousness, points: int) -> None:
        assert news2.consciousness_points(level) == points

    @pytest.mark.parametrize(
        ("celsius", "points"),
        [
            (35.0, 3),
            (35.1, 1),
            (36.0, 1),
            (36.1, 0),
            (38.0, 0),
            (38.1, 1),
            (39.0, 1),
            (39.1, 2),
        ],
    )
    def test_temperature(self, celsius: float, points: int) -> None:
        assert news2.temperature_points(celsius) == points

    @pytest.mark.parametrize(
        ("celsius", "points"),
        [(35.04, 3), (35.05, 1), (36.04, 1), (36.05, 0), (38.04, 0), (38.05, 1), (39.05, 2)],
    )
    def test_temperature_is_rounded_half_away_from_zero(self, celsius: float, points: int) -> None:
        assert news2.temperature_points(celsius) == points


class TestThresholds:
    def test_all_normal_is_zero_and_low(self) -> None:
        result = score_news2(NORMAL)
        assert result is not None
        assert (result.score, result.risk, result.red_flag) == (0, News2Risk.LOW, False)

    def test_one_to_four_is_low(self) -> None:
        result = score_news2(replace(NORMAL, respiration_rate=22, pulse=95, temperature=38.5))
        assert result is not None
        assert (result.score, result.risk) == (4, News2Risk.LOW)

    def test_a_single_three_below_five_is_low_medium_and_a_red_flag(self) -> None:
        result = score_news2(replace(NORMAL, consciousness=Consciousness.V))
        assert result is not None
        assert (result.score, result.risk, result.red_flag) == (3, News2Risk.LOW_MEDIUM, True)

    def test_five_is_medium(self) -> None:
        result = score_news2(
            replace(NORMAL, respiration_rate=22, spo2=94, pulse=95, temperature=38.5)
        )
        assert result is not None
        assert (result.score, result.risk, result.red_flag) == (5, News2Risk.MEDIUM, False)

    def test_six_with_a_red_flag_is_still_medium(self) -> None:
        result = score_news2(replace(NORMAL, systolic_bp=90, pulse=115, temperature=38.5))
        assert result is not None
        assert (result.score, result.risk, result.red_flag) == (6, News2Risk.MEDIUM, True)

    def test_seven_is_high(self) -> None:
        result = score_news2(replace(NORMAL, respiration_rate=25, systolic_bp=95, pulse=115))
        assert result is not None
        assert (result.score, result.risk) == (7, News2Risk.HIGH)

    def test_oxygen_alone_is_never_a_red_flag(self) -> None:
        result = score_news2(replace(NORMAL, on_oxygen=True))
        assert result is not None
        assert (result.score, result.red_flag) == (2, False)

    def test_maximum_is_twenty(self) -> None:
        worst = Observations(
            respiration_rate=30,
            spo2=80,
            on_oxygen=True,
            systolic_bp=80,
            pulse=140,
            consciousness=Consciousness.U,
            temperature=34.0,
        )
        result = score_news2(worst)
        assert result is not None
        assert result.score == 20


class TestWorkedExamples:
    def test_scale_1_example(self) -> None:
        obs = Observations(
            respiration_rate=22, spo2=95, spo2_scale=1, on_oxygen=False, systolic_bp=115,
            pulse=95, consciousness=Consciousness.A, temperature=38.2,
        )  # fmt: skip
        result = score_news2(obs)
        assert result is not None
        assert result.subscores == {
            "respiration_rate": 2, "spo2": 1, "on_oxygen": 0, "systolic_bp": 0,
            "pulse": 1, "consciousness": 0, "temperature": 1,
        }  # fmt: skip
        assert (result.score, result.risk, result.red_flag) == (5, News2Risk.MEDIUM, False)

    def test_scale_2_example(self) -> None:
        obs = Observations(
            respiration_rate=20, spo2=97, spo2_scale=2, on_oxygen=True, systolic_bp=130,
            pulse=80, consciousness=Consciousness.A, temperature=37.0,
        )  # fmt: skip
        result = score_news2(obs)
        assert result is not None
        assert (result.score, result.risk, result.red_flag, result.scale) == (
            5, News2Risk.MEDIUM, True, 2,
        )  # fmt: skip


class TestPartialSets:
    @pytest.mark.parametrize("missing", list(news2.PARAMETERS))
    def test_any_missing_parameter_gives_no_score(self, missing: str) -> None:
        partial = replace(NORMAL, **{missing: None})  # type: ignore[arg-type]
        assert score_news2(partial) is None

    def test_scale_2_high_saturation_without_oxygen_status_gives_no_score(self) -> None:
        assert score_news2(replace(NORMAL, spo2_scale=2, spo2=95, on_oxygen=None)) is None

    def test_nothing_gives_no_score(self) -> None:
        assert score_news2(Observations()) is None


class TestPopulation:
    @pytest.mark.parametrize(
        ("age", "pregnant", "validated"),
        [
            (15, False, False),
            (16, False, True),
            (82, False, True),
            (30, True, False),
            (None, False, True),
        ],
    )
    def test_validated_population(self, age: int | None, pregnant: bool, validated: bool) -> None:
        assert news2.is_validated_population(age_years=age, pregnant=pregnant) is validated

    def test_outside_population_is_still_scored_but_marked(self) -> None:
        result = score_news2(NORMAL, validated=False)
        assert result is not None
        assert (result.score, result.validated) == (0, False)


class TestDerivedRiskFlags:
    def test_normal_observations_add_no_flags(self) -> None:
        assert news2.derived_risk_flags(NORMAL) == frozenset()

    def test_each_rule(self) -> None:
        obs = replace(
            NORMAL, consciousness=Consciousness.C, spo2=90, systolic_bp=100, respiration_rate=26
        )
        assert news2.derived_risk_flags(obs) == {
            RiskFlag.REDUCED_CONSCIOUSNESS,
            RiskFlag.LOW_SPO2,
            RiskFlag.ABNORMAL_SBP,
            RiskFlag.BREATHLESSNESS,
        }

    def test_thresholds_are_exact(self) -> None:
        just_inside = replace(NORMAL, spo2=92, systolic_bp=101, respiration_rate=24)
        assert news2.derived_risk_flags(just_inside) == frozenset()
        assert RiskFlag.ABNORMAL_SBP in news2.derived_risk_flags(replace(NORMAL, systolic_bp=220))

    def test_partial_sets_still_derive_flags(self) -> None:
        assert news2.derived_risk_flags(Observations(consciousness=Consciousness.P)) == {
            RiskFlag.REDUCED_CONSCIOUSNESS
        }
