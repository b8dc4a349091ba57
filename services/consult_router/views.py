"""ORM rows to wire shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from services.consult_router.schemas import (
    CaseSummary,
    ConsultantRead,
    ConsultRead,
    OfferRead,
    ShiftRead,
)
from services.shared.db.models import (
    ConsultCase,
    ConsultConsult,
    ConsultConsultant,
    ConsultOffer,
    ConsultShift,
)

LONDON = ZoneInfo("Europe/London")


def london(moment: datetime) -> str:
    return moment.astimezone(LONDON).isoformat()


def consultant_read(
    consultant: ConsultConsultant, *, connected: bool, active_consults: int
) -> ConsultantRead:
    return ConsultantRead(
        id=consultant.id,
        name=consultant.name,
        grade=consultant.grade,
        specialties=consultant.specialties,
        status=consultant.status,
        status_changed_at=consultant.status_changed_at,
        connected=connected,
        active_consults=active_consults,
    )


def shift_read(shift: ConsultShift, consultant_name: str) -> ShiftRead:
    return ShiftRead(
        id=shift.id,
        consultant_id=shift.consultant_id,
        consultant_name=consultant_name,
        specialty=shift.specialty,
        starts_at=shift.starts_at,
        ends_at=shift.ends_at,
        starts_at_local=london(shift.starts_at),
        ends_at_local=london(shift.ends_at),
    )


def case_summary(case: ConsultCase) -> CaseSummary:
    snapshot = case.snapshot
    return CaseSummary(
        id=case.id,
        reference=case.reference,
        age_years=snapshot.get("age_years"),
        sex=snapshot.get("sex", "unknown"),
        complaint=snapshot.get("presenting_complaint", "other"),
        call_category=case.call_category,
        news2=snapshot.get("news2"),
        risk_flags=list(snapshot.get("risk_flags", [])),
        specialty=case.specialty,
        priority=case.priority,
        waiting_since=case.created_at,
        handover=snapshot.get("handover"),
    )


def offer_read(offer: ConsultOffer, case: ConsultCase) -> OfferRead:
    return OfferRead(
        offer_id=offer.id,
        expires_at=offer.expires_at,
        broadcast=offer.broadcast,
        case=case_summary(case),
    )


def full_case(case: ConsultCase) -> dict[str, Any]:
    """Everything the consultant needs once they hold the case."""
    return {**case.snapshot, "status": case.status, "priority": case.priority}


def consult_status(consult: ConsultConsult, case: ConsultCase) -> str:
    if consult.advised_at is not None:
        return "closed" if case.status == "closed" else "advised"
    if consult.ended_at is not None:
        return "cancelled"
    return "accepted"


def consult_read(consult: ConsultConsult, case: ConsultCase) -> ConsultRead:
    return ConsultRead(
        consult_id=consult.id,
        status=consult_status(consult, case),
        accepted_at=consult.accepted_at,
        advised_at=consult.advised_at,
        disposition=consult.disposition,
        pathway=consult.pathway,
        advice=consult.advice,
        safety_netting=consult.safety_netting,
        risk_override=consult.risk_override,
        case=full_case(case),
    )
