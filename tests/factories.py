"""Request bodies and small builders shared by tests."""

from __future__ import annotations

import copy
import uuid
from typing import Any

NORMAL_OBSERVATIONS: dict[str, Any] = {
    "respiration_rate": 16,
    "spo2": 97,
    "spo2_scale": 1,
    "on_oxygen": False,
    "systolic_bp": 128,
    "pulse": 72,
    "consciousness": "A",
    "temperature": 36.8,
}

# NEWS2.md's first worked example: 5, medium, no red flag.
WORKED_EXAMPLE_OBSERVATIONS: dict[str, Any] = {
    "respiration_rate": 22,
    "spo2": 95,
    "spo2_scale": 1,
    "on_oxygen": False,
    "systolic_bp": 115,
    "pulse": 95,
    "consciousness": "A",
    "temperature": 38.2,
}

RECOGNISABLE_NHS_NUMBER = "9434765919"
RECOGNISABLE_HANDOVER = "Mrs Zebedee-Quartermaine fell at home in Whitechapel"


def case_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "incident": {
            "cad_reference": "CAD-123456",
            "call_category": "C2",
            "callsign": "NE23",
            "location": {"lat": 51.5194, "lon": -0.0590},
        },
        "patient": {"age_years": 82, "sex": "female", "nhs_number": RECOGNISABLE_NHS_NUMBER},
        "presenting_complaint": "fall",
        "requested_specialty": "frailty",
        "observations": copy.deepcopy(WORKED_EXAMPLE_OBSERVATIONS),
        "risk_flags": ["cannot_walk"],
        "handover": {"format": "ATMIST", "text": RECOGNISABLE_HANDOVER},
        "proposed_disposition": "home",
    }
    body.update(overrides)
    return body


def idempotency_key() -> str:
    return f"key-{uuid.uuid4().hex}"
