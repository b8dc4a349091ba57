"""What consult_router tells its peers: the `data` of `consult.*` and `offer.*` events.

To triage_api (the crew's stream) the router sends `consult.*` events with a full
`ConsultStatus`, advice text included. To audit it sends the same events without clinical
free text (`advice`, `safety_netting` are None), plus `offer.*` events.

`router_version` grows with every status the router sends for a case, so a receiver
applies only the newest and a late or repeated one never rewinds anything.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from services.shared.domain.vocabulary import (
    CallCategory,
    Disposition,
    Pathway,
    RiskFlag,
    Specialty,
)


class ConsultantSummary(BaseModel):
    id: str = Field(max_length=128)
    name: str = Field(max_length=200)


class ConsultStatus(BaseModel):
    model_config = ConfigDict(extra="ignore")

    router_version: int = Field(ge=1)
    at: AwareDatetime
    consult_id: str | None = None
    specialty: Specialty | None = None
    consultant: ConsultantSummary | None = None
    # consult.accepted: how the consultant took the case
    via: Literal["offer", "claim"] | None = None
    # consult.advised
    disposition: Disposition | None = None
    pathway: Pathway | None = None
    advice: str | None = None
    safety_netting: str | None = None
    # True when the consultant confirmed a non-ED disposition despite risk flags.
    risk_override: bool = False
    # consult.escalated: "not_accepted" or "no_advice"
    reason: str | None = Field(default=None, max_length=64)
    waited_seconds: float | None = None
    # Facts that make an audit disposition record complete on its own, whatever order
    # events arrive in: when the case was created and accepted, and what it was.
    case_reference: str | None = None
    call_category: CallCategory | None = None
    case_created_at: AwareDatetime | None = None
    accepted_at: AwareDatetime | None = None
    risk_flags: list[RiskFlag] = Field(default_factory=list)


class OfferEvent(BaseModel):
    """`offer.made`, `offer.declined`, `offer.expired`, `offer.withdrawn` (router -> audit)."""

    model_config = ConfigDict(extra="ignore")

    offer_id: str
    consultant_id: str
    specialty: Specialty
    at: AwareDatetime
    expires_at: AwareDatetime | None = None
    # True when offered to everyone eligible at once (the specialty was exhausted).
    broadcast: bool = False
    # offer.withdrawn: accepted_elsewhere, expired, cancelled, reassigned;
    # offer.declined: whether the consultant gave a reason (never the reason's text).
    reason: str | None = Field(default=None, max_length=64)
