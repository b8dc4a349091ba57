"""What happens to a case after it is submitted: repeat observations, cancellation,
acknowledgement by the crew, and the router's news (offered, accepted, advised...)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.shared.auth import Principal
from services.shared.db.models import TriageCase, TriageObservation
from services.shared.domain.vocabulary import (
    CANCELLABLE_STATUSES,
    CallCategory,
    CaseEventType,
    CaseStatus,
    PresentingComplaint,
    RiskFlag,
)
from services.shared.errors import Conflict, NotFound, Unprocessable
from services.shared.schemas.consults import ConsultStatus
from services.shared.schemas.events import Event, EventType
from services.triage_api import repository
from services.triage_api.context import STREAM_CHANNEL, TriageContext
from services.triage_api.outbound import announce_change
from services.triage_api.schemas import AcknowledgeRequest, CancelRequest, ObservationSet
from services.triage_api.service import assess, check_taken_at, news2_document, visible_case

# Observations may still be added after advice (the crew is with the patient until the
# case closes); never to a closed or cancelled case.
_OBSERVABLE = frozenset({*CANCELLABLE_STATUSES, CaseStatus.ADVISED})


async def _own_case(session: AsyncSession, *, case_id: str, actor: Principal) -> TriageCase:
    """The caller's own case, locked for change. Only the crew that asked changes it."""
    case = await visible_case(session, case_id=case_id, actor=actor, for_update=True)
    if case.paramedic_id != actor.sub:
        raise NotFound("no such case")
    return case


def _touch(case: TriageCase, ctx: TriageContext) -> None:
    case.version += 1
    case.updated_at = ctx.clock.now()


async def add_observations(
    session: AsyncSession,
    *,
    ctx: TriageContext,
    case_id: str,
    payload: ObservationSet,
    actor: Principal,
) -> TriageCase:
    """Record a repeat set; NEWS2, risk flags and priority are recomputed from it."""
    case = await _own_case(session, case_id=case_id, actor=actor)
    if case.status not in _OBSERVABLE:
        raise Conflict(f"the case is {case.status}", code="case_closed")
    check_taken_at(payload, ctx)
    assessment = assess(
        payload,
        reported_flags=[RiskFlag(flag) for flag in case.reported_risk_flags],
        age_years=case.age_years,
        complaint=PresentingComplaint(case.presenting_complaint),
        call_category=CallCategory(case.call_category),
    )
    now = ctx.clock.now()
    case.observations = payload.model_dump(mode="json")
    case.news2 = news2_document(assessment.news2)
    case.risk_flags = [str(flag) for flag in assessment.risk_flags]
    case.priority = assessment.priority
    _touch(case, ctx)
    session.add(
        TriageObservation(
            case_id=case.id,
            recorded_at=now,
            recorded_by=actor.sub,
            values=case.observations,
            news2=case.news2,
        )
    )
    await repository.append_event(
        session,
        case,
        type=CaseEventType.OBSERVATIONS_UPDATED,
        at=now,
        data={"news2": case.news2, "priority": case.priority, "risk_flags": case.risk_flags},
    )
    await announce_change(session, ctx, case, event_type=EventType.CASE_UPDATED, actor=actor)
    return case


async def cancel_case(
    session: AsyncSession,
    *,
    ctx: TriageContext,
    case_id: str,
    payload: CancelRequest,
    actor: Principal,
) -> TriageCase:
    """Withdraw the request. Repeating a cancellation changes nothing."""
    case = await _own_case(session, case_id=case_id, actor=actor)
    if case.status == CaseStatus.CANCELLED:
        return case
    if case.status not in CANCELLABLE_STATUSES:
        raise Conflict(
            f"the case is {case.status}; a case with advice is closed by acknowledging it",
            code="invalid_state",
        )
    case.status = CaseStatus.CANCELLED
    case.cancel_reason = payload.reason
    _touch(case, ctx)
    await repository.append_event(
        session, case, type=CaseEventType.CANCELLED, at=case.updated_at, data={}
    )
    await announce_change(session, ctx, case, event_type=EventType.CASE_CANCELLED, actor=actor)
    return case


async def acknowledge_case(
    session: AsyncSession,
    *,
    ctx: TriageContext,
    case_id: str,
    payload: AcknowledgeRequest,
    actor: Principal,
) -> TriageCase:
    """The crew confirms it has the advice and says whether it followed it: the case closes."""
    case = await _own_case(session, case_id=case_id, actor=actor)
    if case.status == CaseStatus.CLOSED:
        if case.advice_followed != payload.followed:
            raise Conflict("the case was already acknowledged differently", code="case_closed")
        return case
    if case.status != CaseStatus.ADVISED:
        raise Conflict("there is no advice to acknowledge yet", code="no_advice_yet")
    case.status = CaseStatus.CLOSED
    case.advice_followed = payload.followed
    case.not_followed_reason = None if payload.followed else payload.reason
    _touch(case, ctx)
    await repository.append_event(
        session,
        case,
        type=CaseEventType.CLOSED,
        at=case.updated_at,
        data={"followed": payload.followed},
    )
    await announce_change(
        session,
        ctx,
        case,
        event_type=EventType.CASE_ACKNOWLEDGED,
        actor=actor,
        audit_extra={"followed": payload.followed},
    )
    return case


# --- the router's news -------------------------------------------------------------------

_STATUS_BY_EVENT = {
    EventType.CONSULT_QUEUED: CaseStatus.QUEUED,
    EventType.CONSULT_OFFERED: CaseStatus.OFFERED,
    EventType.CONSULT_ACCEPTED: CaseStatus.ACCEPTED,
    EventType.CONSULT_ADVISED: CaseStatus.ADVISED,
}


async def apply_router_event(session: AsyncSession, *, ctx: TriageContext, event: Event) -> None:
    """Turn a `consult.*` event into the case's status and the crew's stream.

    Only the newest router status counts (`router_version`), so a late or repeated event
    never rewinds the stream; cancelled and closed cases stay as they are, and advice,
    once given, is never taken back.
    """
    try:
        status = ConsultStatus.model_validate(event.data)
    except ValueError:
        raise Unprocessable("the consult status is malformed", code="bad_event") from None
    case = await repository.get_case(session, event.subject_id, for_update=True)
    if case is None:
        raise NotFound("no such case", code="unknown_case")
    if status.router_version <= case.router_version:
        return
    case.router_version = status.router_version
    if case.status in (CaseStatus.CANCELLED, CaseStatus.CLOSED):
        return
    if event.type == EventType.CONSULT_ESCALATED:
        await _append(session, ctx, case, CaseEventType.ESCALATED, status, _escalation(status))
        return
    target = _STATUS_BY_EVENT.get(event.type)
    if target is None or case.status == CaseStatus.ADVISED:
        return
    # A repeated status adds nothing to the crew's stream; a new acceptance (another
    # consultant took the case over) does.
    if target == case.status and target != CaseStatus.ACCEPTED:
        return
    await _move(session, ctx, case, target, status)


async def _move(
    session: AsyncSession,
    ctx: TriageContext,
    case: TriageCase,
    target: CaseStatus,
    status: ConsultStatus,
) -> None:
    data: dict[str, Any] = {}
    if status.consultant is not None:
        case.assigned_consultant_id = status.consultant.id
        case.assigned_consultant_name = status.consultant.name
        data["consultant"] = status.consultant.model_dump()
    if target == CaseStatus.QUEUED:
        case.assigned_consultant_id = case.assigned_consultant_name = None
    if target == CaseStatus.ADVISED:
        if status.disposition is None:
            raise Unprocessable("advice without a disposition", code="bad_event")
        case.advice = {
            "disposition": status.disposition,
            "pathway": status.pathway,
            "advice": status.advice,
            "safety_netting": status.safety_netting,
            "decided_at": status.at.isoformat(),
        }
        data.update(case.advice)
    case.status = target
    case.version += 1
    case.updated_at = ctx.clock.now()
    await _append(session, ctx, case, CaseEventType(target.value), status, data)


async def _append(
    session: AsyncSession,
    ctx: TriageContext,
    case: TriageCase,
    kind: CaseEventType,
    status: ConsultStatus,
    data: dict[str, Any],
) -> None:
    await repository.append_event(session, case, type=kind, at=status.at, data=data)
    await ctx.notifier.publish(session, STREAM_CHANNEL, case.id)


def _escalation(status: ConsultStatus) -> dict[str, Any]:
    return {"reason": status.reason, "waited_seconds": status.waited_seconds}
