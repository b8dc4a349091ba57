"""consult_router's wire shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    model_validator,
)

from services.shared.domain.vocabulary import ConsultantStatus, Disposition, Pathway, Specialty


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConsultantUpsert(_Strict):
    name: StrictStr = Field(min_length=1, max_length=200)
    grade: StrictStr = Field(min_length=1, max_length=64)
    specialties: list[Specialty] = Field(min_length=1, max_length=len(Specialty))


class ConsultantRead(BaseModel):
    id: str
    name: str
    grade: str
    specialties: list[Specialty]
    status: ConsultantStatus
    status_changed_at: AwareDatetime
    connected: bool
    active_consults: int


class ShiftCreate(_Strict):
    """A shift. Times with an offset are taken as given; times without one are read as
    Europe/London wall-clock times (a time that does not exist, or happens twice, on a
    clock-change night must carry its offset)."""

    consultant_id: StrictStr = Field(min_length=1, max_length=128)
    specialty: Specialty
    starts_at: datetime
    ends_at: datetime


class ShiftRead(BaseModel):
    id: str
    consultant_id: str
    consultant_name: str
    specialty: Specialty
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    # The same moments on the wall clocks of Europe/London.
    starts_at_local: str
    ends_at_local: str


class OnCallEntry(BaseModel):
    consultant: ConsultantRead
    shift: ShiftRead


class OnCallRead(BaseModel):
    specialty: Specialty
    at: AwareDatetime
    at_local: str
    on_call: list[OnCallEntry]
    # Who takes the case when nobody in the specialty is free.
    fallback: Specialty


class StatusUpdate(_Strict):
    status: ConsultantStatus


class DeclineRequest(_Strict):
    reason: StrictStr | None = Field(default=None, max_length=500)


class AcceptResult(BaseModel):
    consult_id: str


class AdviceCreate(_Strict):
    disposition: Disposition
    pathway: Pathway | None = None
    advice: StrictStr = Field(default="", max_length=4000)
    safety_netting: StrictStr = Field(default="", max_length=4000)
    confirm_risk_override: StrictBool = False

    @model_validator(mode="after")
    def _pathway_for_redirect(self) -> AdviceCreate:
        if self.disposition == Disposition.REDIRECT and self.pathway is None:
            raise ValueError("a redirect needs a pathway")
        return self


class CaseSummary(BaseModel):
    """What an offer shows: enough to decide, before the consultant takes the case."""

    id: str
    reference: str
    age_years: int | None
    sex: str
    complaint: str
    call_category: str
    news2: dict[str, Any] | None
    risk_flags: list[str]
    specialty: str
    priority: int
    waiting_since: AwareDatetime
    handover: dict[str, Any] | None


class OfferRead(BaseModel):
    offer_id: str
    expires_at: AwareDatetime
    broadcast: bool
    case: CaseSummary


class ConsultRead(BaseModel):
    consult_id: str
    status: Literal["accepted", "advised", "cancelled", "closed"]
    accepted_at: AwareDatetime
    advised_at: AwareDatetime | None
    disposition: Disposition | None
    pathway: Pathway | None
    advice: str | None
    safety_netting: str | None
    risk_override: bool
    # The full case: observations, flags, handover, the crew.
    case: dict[str, Any]


class QueueLineFixed(BaseModel):
    """What a queue line holds from one snapshot of the crew's to the next: the process
    keeps it encoded (`QueueLines`), and adds what moves at each read."""

    case_id: str
    reference: str
    priority: int
    specialty: str
    call_category: str
    news2: dict[str, Any] | None
    risk_flags: list[str]
    waiting_since: AwareDatetime


class QueueItem(QueueLineFixed):
    status: str
    waiting_seconds: float
    held_by: list[str]
    escalated: bool


class QueueRead(BaseModel):
    items: list[QueueItem]


class ConsultantSnapshot(BaseModel):
    """The consultant's state: what `welcome` carries and `GET /v1/consultant` returns."""

    consultant: ConsultantRead
    offers: list[OfferRead]
    consults: list[ConsultRead]
    last_seq: int
