"""NEWS2 (Royal College of Physicians, 2017) as pure functions.

The server computes the score from every observation set; clients never send one. A
parameter that is missing leaves the total undefined (`score_news2` returns None), but the
points of the parameters that are present are still known, which is what the derived risk
flags need.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

from services.shared.domain.vocabulary import Consciousness, News2Risk, RiskFlag

# Parameter names as they appear in `subscores` on the wire.
RESPIRATION_RATE = "respiration_rate"
SPO2 = "spo2"
ON_OXYGEN = "on_oxygen"
SYSTOLIC_BP = "systolic_bp"
PULSE = "pulse"
CONSCIOUSNESS = "consciousness"
TEMPERATURE = "temperature"

PARAMETERS = (RESPIRATION_RATE, SPO2, ON_OXYGEN, SYSTOLIC_BP, PULSE, CONSCIOUSNESS, TEMPERATURE)

PAEDIATRIC_AGE_LIMIT = 16


@dataclass(frozen=True, slots=True)
class Observations:
    """One set of vital signs; any field may be missing."""

    respiration_rate: int | None = None
    spo2: int | None = None
    spo2_scale: int = 1
    on_oxygen: bool | None = None
    systolic_bp: int | None = None
    pulse: int | None = None
    consciousness: Consciousness | None = None
    temperature: float | None = None


@dataclass(frozen=True, slots=True)
class News2Result:
    score: int
    risk: News2Risk
    red_flag: bool
    scale: int
    subscores: dict[str, int] = field(default_factory=dict)
    validated: bool = True


def round_temperature(celsius: float) -> Decimal:
    """Round to one decimal place, half away from zero, as NEWS2 scores temperature.

    Going through `str` keeps 36.05 as 36.05 rather than its binary approximation.
    """
    return Decimal(str(celsius)).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


def respiration_points(rate: int) -> int:
    if rate <= 8:
        return 3
    if rate <= 11:
        return 1
    if rate <= 20:
        return 0
    if rate <= 24:
        return 2
    return 3


def spo2_scale1_points(spo2: int) -> int:
    if spo2 <= 91:
        return 3
    if spo2 <= 93:
        return 2
    if spo2 <= 95:
        return 1
    return 0


def spo2_scale2_points(spo2: int, *, on_oxygen: bool | None) -> int | None:
    """Scale 2 (hypercapnic respiratory failure). Above 92% the points depend on oxygen;
    None when that is not known."""
    if spo2 <= 83:
        return 3
    if spo2 <= 85:
        return 2
    if spo2 <= 87:
        return 1
    if spo2 <= 92:
        return 0
    if on_oxygen is None:
        return None
    if not on_oxygen:
        return 0
    if spo2 <= 94:
        return 1
    if spo2 <= 96:
        return 2
    return 3


def oxygen_points(on_oxygen: bool) -> int:
    return 2 if on_oxygen else 0


def systolic_bp_points(sbp: int) -> int:
    if sbp <= 90:
        return 3
    if sbp <= 100:
        return 2
    if sbp <= 110:
        return 1
    if sbp <= 219:
        return 0
    return 3


def pulse_points(pulse: int) -> int:
    if pulse <= 40:
        return 3
    if pulse <= 50:
        return 1
    if pulse <= 90:
        return 0
    if pulse <= 110:
        return 1
    if pulse <= 130:
        return 2
    return 3


def consciousness_points(level: Consciousness) -> int:
    return 0 if level == Consciousness.A else 3


def temperature_points(celsius: float) -> int:
    rounded = round_temperature(celsius)
    if rounded <= Decimal("35.0"):
        return 3
    if rounded <= Decimal("36.0"):
        return 1
    if rounded <= Decimal("38.0"):
        return 0
    if rounded <= Decimal("39.0"):
        return 1
    return 2


def parameter_points(obs: Observations) -> dict[str, int]:
    """Points for every parameter that can be scored from what is present."""
    points: dict[str, int] = {}
    if obs.respiration_rate is not None:
        points[RESPIRATION_RATE] = respiration_points(obs.respiration_rate)
    if obs.spo2 is not None:
        spo2 = (
            spo2_scale2_points(obs.spo2, on_oxygen=obs.on_oxygen)
            if obs.spo2_scale == 2
            else spo2_scale1_points(obs.spo2)
        )
        if spo2 is not None:
            points[SPO2] = spo2
    if obs.on_oxygen is not None:
        points[ON_OXYGEN] = oxygen_points(obs.on_oxygen)
    if obs.systolic_bp is not None:
        points[SYSTOLIC_BP] = systolic_bp_points(obs.systolic_bp)
    if obs.pulse is not None:
        points[PULSE] = pulse_points(obs.pulse)
    if obs.consciousness is not None:
        points[CONSCIOUSNESS] = consciousness_points(obs.consciousness)
    if obs.temperature is not None:
        points[TEMPERATURE] = temperature_points(obs.temperature)
    return points


def risk_band(total: int, *, red_flag: bool) -> News2Risk:
    if total >= 7:
        return News2Risk.HIGH
    if total >= 5:
        return News2Risk.MEDIUM
    if red_flag:
        return News2Risk.LOW_MEDIUM
    return News2Risk.LOW


def is_validated_population(*, age_years: int | None, pregnant: bool) -> bool:
    """NEWS2 is validated for adults (16+) who are not pregnant."""
    if pregnant:
        return False
    return age_years is None or age_years >= PAEDIATRIC_AGE_LIMIT


def score_news2(obs: Observations, *, validated: bool = True) -> News2Result | None:
    """The NEWS2 score of a complete set, or None for a partial one (never a wrong score)."""
    points = parameter_points(obs)
    if any(name not in points for name in PARAMETERS):
        return None
    total = sum(points.values())
    red_flag = any(value == 3 for value in points.values())
    return News2Result(
        score=total,
        risk=risk_band(total, red_flag=red_flag),
        red_flag=red_flag,
        scale=obs.spo2_scale,
        subscores={name: points[name] for name in PARAMETERS},
        validated=validated,
    )


def derived_risk_flags(obs: Observations) -> frozenset[RiskFlag]:
    """Risk flags the server adds from the newest observations (NEWS2.md)."""
    points = parameter_points(obs)
    flags: set[RiskFlag] = set()
    if obs.consciousness is not None and obs.consciousness != Consciousness.A:
        flags.add(RiskFlag.REDUCED_CONSCIOUSNESS)
    if points.get(SPO2) == 3:
        flags.add(RiskFlag.LOW_SPO2)
    if points.get(SYSTOLIC_BP, 0) >= 2:
        flags.add(RiskFlag.ABNORMAL_SBP)
    if points.get(RESPIRATION_RATE) == 3:
        flags.add(RiskFlag.BREATHLESSNESS)
    return frozenset(flags)
