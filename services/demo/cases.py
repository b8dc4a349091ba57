"""Synthetic cases with a plausible mix: who calls for advice, with what, how unwell.

Every value is made up (the NHS numbers are valid by the modulus-11 rule but drawn from
random digits); nothing here describes a real patient.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from services.shared.domain.nhs_number import is_valid_nhs_number

# (complaint, specialty, weight, typical ages, likely flags)
PRESENTATIONS: list[tuple[str, str, int, tuple[int, int], tuple[str, ...]]] = [
    ("fall", "frailty", 30, (70, 98), ("cannot_walk", "head_injury_anticoagulated")),
    ("breathing_difficulty", "acute_medicine", 12, (45, 90), ("breathlessness", "low_spo2")),
    ("chest_pain", "cardiology", 10, (35, 85), ("chest_pain_cardiac",)),
    ("infection", "acute_medicine", 10, (20, 95), ()),
    ("collapse", "emergency_medicine", 8, (30, 90), ("reduced_consciousness",)),
    ("mental_health_crisis", "mental_health", 8, (18, 70), ("safeguarding",)),
    ("abdominal_pain", "surgery", 6, (18, 85), ()),
    ("stroke_symptoms", "stroke", 4, (55, 95), ("reduced_consciousness",)),
    ("diabetic", "acute_medicine", 4, (20, 85), ()),
    ("injury", "emergency_medicine", 5, (5, 90), ()),
    ("seizure", "emergency_medicine", 3, (10, 80), ()),
]
CATEGORIES = (("C1", 3), ("C2", 45), ("C3", 40), ("C4", 12))
CALLSIGNS = ("NE23", "NE31", "SW07", "EC12", "WH04", "BT19", "RM22", "HX05")


@dataclass(frozen=True)
class SyntheticCase:
    body: dict[str, Any]
    crew: str
    # A case that worsens: the crew sends a worse set of observations while it waits.
    deteriorates: bool


def nhs_number(rng: random.Random) -> str:
    while True:
        candidate = "9" + "".join(str(rng.randrange(10)) for _ in range(9))
        if is_valid_nhs_number(candidate):
            return candidate


def observations(rng: random.Random, *, unwell: float) -> dict[str, Any]:
    """A set of vital signs, further from normal the more `unwell` (0..1)."""

    def spread(normal: float, worst: float) -> float:
        return normal + (worst - normal) * unwell * rng.uniform(0.6, 1.2)

    return {
        "respiration_rate": int(spread(16, 28)),
        "spo2": max(82, min(100, int(spread(97, 89)))),
        "spo2_scale": 1,
        "on_oxygen": unwell > 0.75 and rng.random() < 0.5,
        "systolic_bp": int(spread(128, 92)),
        "pulse": int(spread(80, 128)),
        "consciousness": "A" if unwell < 0.85 or rng.random() < 0.6 else "C",
        "temperature": round(spread(36.8, 38.9), 1),
    }


def synthetic_case(rng: random.Random, number: int) -> SyntheticCase:
    complaint, specialty, _, ages, likely = rng.choices(
        PRESENTATIONS, weights=[p[2] for p in PRESENTATIONS]
    )[0]
    category = rng.choices([c for c, _ in CATEGORIES], weights=[w for _, w in CATEGORIES])[0]
    unwell = min(1.0, rng.betavariate(1.6, 3.2) + (0.25 if category == "C1" else 0.0))
    callsign = rng.choice(CALLSIGNS)
    flags = [flag for flag in likely if rng.random() < 0.45]
    age = rng.randint(*ages)
    body: dict[str, Any] = {
        "incident": {
            "cad_reference": f"CAD-{rng.randint(100000, 999999)}",
            "call_category": category,
            "callsign": callsign,
            "location": {
                "lat": round(51.50 + rng.uniform(-0.06, 0.06), 4),
                "lon": round(-0.06 + rng.uniform(-0.12, 0.12), 4),
            },
        },
        "patient": {
            "age_years": age,
            "sex": rng.choice(("female", "male")),
            "nhs_number": nhs_number(rng),
        },
        "presenting_complaint": complaint,
        "requested_specialty": specialty,
        "observations": observations(rng, unwell=unwell),
        "risk_flags": flags,
        "handover": {"format": "ATMIST", "text": _handover(rng, complaint, age, number)},
        "proposed_disposition": rng.choice((None, "home", "redirect", "convey_ed")),
    }
    return SyntheticCase(
        body=body, crew=f"crew-{callsign.lower()}", deteriorates=rng.random() < 0.15
    )


def worse(rng: random.Random) -> dict[str, Any]:
    """A repeat set of observations, clearly worse than the first."""
    return observations(rng, unwell=0.9)


def _handover(rng: random.Random, complaint: str, age: int, number: int) -> str:
    mechanism = {
        "fall": "found on the floor by a carer, long lie suspected",
        "breathing_difficulty": "increasing breathlessness over two days",
        "chest_pain": "central chest pain at rest, now easing",
        "infection": "fever and confusion since this morning",
        "collapse": "witnessed collapse, brief loss of consciousness",
        "mental_health_crisis": "distressed, known to the community team",
        "abdominal_pain": "lower abdominal pain, vomiting twice",
        "stroke_symptoms": "word-finding difficulty, resolved on our arrival",
        "diabetic": "low blood glucose, treated, now alert",
        "injury": "injury to the wrist, no other injuries",
        "seizure": "single seizure, known epilepsy, back to baseline",
    }.get(complaint, "unwell")
    return (
        f"A: {age}. T: {rng.randint(1, 6)} h ago. M: {mechanism}. "
        f"I: see observations. S: stable on scene. T: awaiting advice (demo case {number})."
    )
