"""Request bodies and small builders shared by tests."""

from __future__ import annotations

import copy
import json
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


# Text the database cannot store, recognisable so a test can show it is never repeated.
NUL_TEXT = "Marchetti\x00Blackwood"
LONE_SURROGATE_TEXT = "Marchetti\ud800Blackwood"
UNSTORABLE_WORDS = ("Marchetti", "Blackwood")


def json_content(body: Any, *, raw_surrogates: bool = False) -> bytes:
    """`body` as a client sends it: a NUL or a lone surrogate as the JSON escape (`\\u0000`,
    `\\ud800`), or with `raw_surrogates` a lone surrogate as the bytes of its UTF-8 form,
    which Python's JSON parser reads as well."""
    if raw_surrogates:
        return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return json.dumps(body).encode()


# Each way a client can send text the database cannot store, as (text, raw_surrogates).
UNSTORABLE_WAYS = {
    "nul": (NUL_TEXT, False),
    "escaped lone surrogate": (LONE_SURROGATE_TEXT, False),
    "lone surrogate as bytes": (LONE_SURROGATE_TEXT, True),
}
