"""The paramedic API's wire shapes. Request bodies are strict: a vital sign sent as a
string, a fraction or a misspelt field name is refused rather than guessed at."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from services.shared.domain.nhs_number import InvalidNhsNumberError, normalise_nhs_number
from services.shared.domain.vocabulary import (
    CallCategory,
    CaseEventType,
    CaseStatus,
    Consciousness,
    Disposition,
    HandoverFormat,
    Pathway,
    PresentingComplaint,
    RiskFlag,
    Sex,
    Specialty,
)
from services.shared.schemas.cases import Handover, News2Read

IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{8,128}$"


class _Strict(BaseModel):
    """Numbers, booleans and strings must arrive as themselves (no "88" for 88, no 1 for
    true); enums and timestamps arrive as their JSON strings. Unknown fields are refused:
    a misspelt vital sign must not be silently dropped."""

    model_config = ConfigDict(extra="forbid")


class Location(_Strict):
    lat: StrictFloat = Field(ge=-90, le=90)
    lon: StrictFloat = Field(ge=-180, le=180)


class Incident(_Strict):
    cad_reference: StrictStr = Field(min_length=1, max_length=64)
    call_category: CallCategory
    callsign: StrictStr = Field(min_length=1, max_length=32)
    location: Location | None = None


class Patient(_Strict):
    age_years: StrictInt | None = Field(default=None, ge=0, le=130)
    sex: Sex = Sex.UNKNOWN
    nhs_number: StrictStr | None = Field(default=None, max_length=20)

    @field_validator("nhs_number")
    @classmethod
    def _valid_nhs_number(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return normalise_nhs_number(value)
        except InvalidNhsNumberError as exc:
            raise ValueError(str(exc)) from None


class ObservationSet(_Strict):
    """One set of vital signs. Ranges refuse the impossible, not the alarming."""

    respiration_rate: StrictInt | None = Field(default=None, ge=1, le=80)
    spo2: StrictInt | None = Field(default=None, ge=30, le=100)
    spo2_scale: Literal[1, 2] = 1
    on_oxygen: StrictBool | None = None
    systolic_bp: StrictInt | None = Field(default=None, ge=40, le=300)
    pulse: StrictInt | None = Field(default=None, ge=20, le=300)
    consciousness: Consciousness | None = None
    temperature: StrictFloat | None = Field(default=None, ge=25.0, le=45.0)
    taken_at: AwareDatetime | None = None

    @field_validator("temperature")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("temperature must be a number")
        return value


class HandoverIn(_Strict):
    format: HandoverFormat
    text: StrictStr = Field(max_length=4000)


class CaseCreate(_Strict):
    incident: Incident
    patient: Patient
    presenting_complaint: PresentingComplaint
    requested_specialty: Specialty
    observations: ObservationSet | None = None
    risk_flags: list[RiskFlag] = Field(default_factory=list, max_length=len(RiskFlag))
    handover: HandoverIn | None = None
    proposed_disposition: Disposition | None = None

    @field_validator("risk_flags")
    @classmethod
    def _unique_flags(cls, value: list[RiskFlag]) -> list[RiskFlag]:
        return sorted(set(value))


class CancelRequest(_Strict):
    reason: StrictStr = Field(min_length=1, max_length=1000)


class AcknowledgeRequest(_Strict):
    followed: StrictBool
    reason: StrictStr | None = Field(default=None, max_length=1000)

    @model_validator(mode="after")
    def _reason_when_not_followed(self) -> AcknowledgeRequest:
        if not self.followed and not (self.reason and self.reason.strip()):
            raise ValueError("a reason is required when the advice was not followed")
        return self


class ConsultantRef(BaseModel):
    id: str
    name: str


class AdviceRead(BaseModel):
    disposition: Disposition
    pathway: Pathway | None
    advice: str | None
    safety_netting: str | None
    decided_at: AwareDatetime


class AcknowledgementRead(BaseModel):
    followed: bool
    reason: str | None


class LocationRead(BaseModel):
    lat: float
    lon: float


class IncidentRead(BaseModel):
    cad_reference: str
    call_category: CallCategory
    callsign: str
    location: LocationRead | None


class PatientRead(BaseModel):
    age_years: int | None
    sex: Sex
    nhs_number: str | None


class CaseRead(BaseModel):
    id: str
    reference: str
    status: CaseStatus
    priority: int
    news2: News2Read | None
    risk_flags: list[RiskFlag]
    reported_risk_flags: list[RiskFlag]
    created_at: AwareDatetime
    updated_at: AwareDatetime
    requested_specialty: Specialty
    presenting_complaint: PresentingComplaint
    incident: IncidentRead
    patient: PatientRead
    observations: dict[str, Any] | None
    handover: Handover | None
    proposed_disposition: Disposition | None
    assigned_consultant: ConsultantRef | None
    advice: AdviceRead | None
    acknowledgement: AcknowledgementRead | None
    cancel_reason: str | None
    last_event_seq: int


class CasePage(BaseModel):
    items: list[CaseRead]
    next_cursor: str | None


class CaseEventRead(BaseModel):
    seq: int
    type: CaseEventType
    at: AwareDatetime
    data: dict[str, Any]


class CaseEventPage(BaseModel):
    items: list[CaseEventRead]
    last_seq: int
