"""Case shapes that cross service boundaries: NEWS2 on the wire, and the snapshot of a
case that triage_api sends consult_router with every change."""

from __future__ import annotations

from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from services.shared.domain.news2 import News2Result
from services.shared.domain.priority import HIGHEST_PRIORITY, LOWEST_PRIORITY
from services.shared.domain.vocabulary import (
    CallCategory,
    CaseStatus,
    Disposition,
    HandoverFormat,
    News2Risk,
    PresentingComplaint,
    RiskFlag,
    Sex,
    Specialty,
)


class News2Read(BaseModel):
    score: int
    risk: News2Risk
    red_flag: bool
    scale: int
    subscores: dict[str, int]
    # False outside NEWS2's validated population (under 16, or pregnancy).
    validated: bool

    @classmethod
    def of(cls, result: News2Result) -> News2Read:
        return cls(
            score=result.score,
            risk=result.risk,
            red_flag=result.red_flag,
            scale=result.scale,
            subscores=dict(result.subscores),
            validated=result.validated,
        )


class Handover(BaseModel):
    format: HandoverFormat
    text: str


class CaseSnapshot(BaseModel):
    """Everything the router needs to route a case and show it to a consultant.

    `version` grows with every change: a receiver keeps the highest it has seen, so
    snapshots may arrive late, twice or out of order.
    """

    model_config = ConfigDict(extra="ignore")

    id: str
    reference: str
    version: int
    status: CaseStatus
    # As `case_priority` gives it: the router's ageing, in SQL and in the process, holds
    # only for priorities in this range.
    priority: int = Field(ge=HIGHEST_PRIORITY, le=LOWEST_PRIORITY)
    created_at: AwareDatetime
    updated_at: AwareDatetime
    call_category: CallCategory
    callsign: str
    presenting_complaint: PresentingComplaint
    requested_specialty: Specialty
    age_years: int | None
    sex: Sex
    nhs_number: str | None
    news2: News2Read | None
    risk_flags: list[RiskFlag]
    observations: dict[str, Any] | None
    handover: Handover | None
    proposed_disposition: Disposition | None
    paramedic_id: str
    paramedic_name: str
