"""triage_api settings: the shared blocks plus what only this service needs."""

from __future__ import annotations

from pydantic import Field

from services.shared.settings import ServiceSettings


class TriageSettings(ServiceSettings):
    cases_page_size_max: int = Field(default=50, ge=1, le=200)
    # Observations stamped further ahead than this are refused as a clock error.
    observation_future_tolerance_seconds: float = Field(default=300.0, ge=0)
    # Under load, new cases arriving together are written in one transaction, up to this
    # many at a time (1: each alone).
    intake_batch_max: int = Field(default=64, ge=1, le=500)
