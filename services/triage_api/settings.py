"""triage_api settings: the shared blocks plus what only this service needs."""

from __future__ import annotations

from pydantic import Field

from services.shared.settings import ServiceSettings


class TriageSettings(ServiceSettings):
    cases_page_size_max: int = Field(default=50, ge=1, le=200)
    # Observations stamped further ahead than this are refused as a clock error.
    observation_future_tolerance_seconds: float = Field(default=300.0, ge=0)
