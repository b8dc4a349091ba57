"""ORM rows to wire shapes; nothing outside the service layer sees an ORM object."""

from __future__ import annotations

from services.shared.db.models import TriageCase, TriageCaseEvent
from services.shared.schemas.cases import Handover, News2Read
from services.triage_api.schemas import (
    AcknowledgementRead,
    AdviceRead,
    CaseEventRead,
    CaseRead,
    ConsultantRef,
    IncidentRead,
    LocationRead,
    PatientRead,
)


def case_read(case: TriageCase) -> CaseRead:
    location = (
        LocationRead(lat=case.location_lat, lon=case.location_lon)
        if case.location_lat is not None and case.location_lon is not None
        else None
    )
    consultant = (
        ConsultantRef(id=case.assigned_consultant_id, name=case.assigned_consultant_name or "")
        if case.assigned_consultant_id
        else None
    )
    acknowledgement = (
        AcknowledgementRead(followed=case.advice_followed, reason=case.not_followed_reason)
        if case.advice_followed is not None
        else None
    )
    return CaseRead(
        id=case.id,
        reference=case.reference,
        status=case.status,
        priority=case.priority,
        news2=News2Read.model_validate(case.news2) if case.news2 else None,
        risk_flags=case.risk_flags,
        reported_risk_flags=case.reported_risk_flags,
        created_at=case.created_at,
        updated_at=case.updated_at,
        requested_specialty=case.requested_specialty,
        presenting_complaint=case.presenting_complaint,
        incident=IncidentRead(
            cad_reference=case.cad_reference,
            call_category=case.call_category,
            callsign=case.callsign,
            location=location,
        ),
        patient=PatientRead(
            age_years=case.age_years,
            sex=case.sex,
            nhs_number=case.nhs_number,
        ),
        observations=case.observations,
        handover=(
            Handover(format=case.handover_format, text=case.handover_text or "")
            if case.handover_format
            else None
        ),
        proposed_disposition=case.proposed_disposition,
        assigned_consultant=consultant,
        advice=AdviceRead.model_validate(case.advice) if case.advice else None,
        acknowledgement=acknowledgement,
        cancel_reason=case.cancel_reason,
        last_event_seq=case.event_seq,
    )


def event_read(event: TriageCaseEvent) -> CaseEventRead:
    return CaseEventRead(
        seq=event.seq,
        type=event.type,
        at=event.at,
        data=event.data,
    )
