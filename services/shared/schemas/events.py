"""The envelope of every event one service sends another through its outbox.

Event types are dotted names (`case.submitted`, `consult.accepted`). `subject_id` is the
case (or consult) the event is about; `actor` is who caused it. `data` is the event's
content for that destination: a full case snapshot for the router, identifiers and
vocabulary values only for audit, never clinical free text.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from services.shared.auth import Principal
from services.shared.ids import new_event_id


class EventActor(BaseModel):
    model_config = ConfigDict(frozen=True)

    sub: str = Field(max_length=128)
    role: str = Field(max_length=32)

    @classmethod
    def of(cls, principal: Principal) -> EventActor:
        return cls(sub=principal.sub, role=str(principal.role))


class Event(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str = Field(min_length=8, max_length=64)
    type: str = Field(min_length=3, max_length=64, pattern=r"^[a-z_]+(\.[a-z_]+)+$")
    source: str = Field(max_length=32)
    occurred_at: AwareDatetime
    subject_id: str = Field(max_length=64)
    actor: EventActor | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def new(
        cls,
        *,
        type: str,
        source: str,
        occurred_at: datetime,
        subject_id: str,
        actor: EventActor | None = None,
        data: dict[str, Any] | None = None,
    ) -> Event:
        return cls(
            id=new_event_id(),
            type=type,
            source=source,
            occurred_at=occurred_at,
            subject_id=subject_id,
            actor=actor,
            data=data or {},
        )


def event_document(
    *,
    type: str,
    source: str,
    occurred_at: datetime,
    subject_id: str,
    actor: Principal | None,
    data: dict[str, Any],
) -> dict[str, Any]:
    """A new event as `Event.new(...).model_dump(mode="json")` writes it, built directly.

    For the hot paths, whose values are this service's own and already valid: a new case
    writes two events, and validating, copying and dumping them as models cost ~45 us of
    its CPU. `data` must hold JSON values only (strings for times and vocabulary).
    """
    moment = occurred_at.isoformat()
    return {
        "id": new_event_id(),
        "type": type,
        "source": source,
        "occurred_at": moment[:-6] + "Z" if moment.endswith("+00:00") else moment,
        "subject_id": subject_id,
        "actor": None if actor is None else {"sub": actor.sub, "role": str(actor.role)},
        "data": data,
    }


class EventBatch(BaseModel):
    """What a sender posts; events are validated one by one by the receiver."""

    events: list[dict[str, Any]] = Field(max_length=1000)


class EventOutcome(BaseModel):
    id: str
    # accepted: handled now; duplicate: handled before; ignored: of no interest here;
    # rejected: invalid, never to be retried.
    outcome: str
    detail: str | None = None


class EventBatchResult(BaseModel):
    results: list[EventOutcome]


class EventType:
    """Event types between services. Add types; never rename one."""

    # triage_api -> consult_router (case snapshots) and audit (identifiers only)
    CASE_SUBMITTED = "case.submitted"
    CASE_UPDATED = "case.updated"
    CASE_CANCELLED = "case.cancelled"
    CASE_ACKNOWLEDGED = "case.acknowledged"
    # triage_api -> audit: someone read a case
    CASE_VIEWED = "case.viewed"
    # consult_router -> triage_api (the crew's stream) and audit
    CONSULT_QUEUED = "consult.queued"
    CONSULT_OFFERED = "consult.offered"
    CONSULT_ACCEPTED = "consult.accepted"
    CONSULT_ADVISED = "consult.advised"
    CONSULT_ESCALATED = "consult.escalated"
    # consult_router -> audit only
    OFFER_MADE = "offer.made"
    OFFER_DECLINED = "offer.declined"
    OFFER_EXPIRED = "offer.expired"
    OFFER_WITHDRAWN = "offer.withdrawn"
