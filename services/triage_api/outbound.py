"""What triage_api tells its peers about a case.

The router gets a full snapshot (it shows the case to a consultant); audit gets
identifiers and vocabulary values only, never the patient's details or free text.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.shared.auth import Principal
from services.shared.clients.peers import Peer
from services.shared.db.models import TriageCase
from services.shared.schemas.events import EventType, event_document
from services.triage_api import SERVICE_NAME
from services.triage_api.context import STREAM_CHANNEL, TriageContext

_TO_ROUTER = frozenset(
    {
        EventType.CASE_SUBMITTED,
        EventType.CASE_UPDATED,
        EventType.CASE_CANCELLED,
        EventType.CASE_ACKNOWLEDGED,
    }
)


def router_snapshot(case: TriageCase) -> dict[str, Any]:
    """The case as `services.shared.schemas.cases.CaseSnapshot` describes it."""
    handover = (
        {"format": case.handover_format, "text": case.handover_text or ""}
        if case.handover_format
        else None
    )
    return {
        "id": case.id,
        "reference": case.reference,
        "version": case.version,
        "status": case.status,
        "priority": case.priority,
        "created_at": case.created_at.isoformat(),
        "updated_at": case.updated_at.isoformat(),
        "call_category": case.call_category,
        "callsign": case.callsign,
        "presenting_complaint": case.presenting_complaint,
        "requested_specialty": case.requested_specialty,
        "age_years": case.age_years,
        "sex": case.sex,
        "nhs_number": case.nhs_number,
        "news2": case.news2,
        "risk_flags": list(case.risk_flags),
        "observations": case.observations,
        "handover": handover,
        "proposed_disposition": case.proposed_disposition,
        "paramedic_id": case.paramedic_id,
        "paramedic_name": case.paramedic_name,
    }


def audit_summary(case: TriageCase) -> dict[str, Any]:
    news2 = case.news2 or {}
    return {
        "reference": case.reference,
        "status": case.status,
        "version": case.version,
        "priority": case.priority,
        "specialty": case.requested_specialty,
        "call_category": case.call_category,
        "presenting_complaint": case.presenting_complaint,
        "news2_score": news2.get("score"),
        "news2_risk": news2.get("risk"),
        "red_flag": news2.get("red_flag"),
        "risk_flags": list(case.risk_flags),
        "proposed_disposition": case.proposed_disposition,
        "created_at": case.created_at.isoformat(),
    }


async def announce_change(
    session: AsyncSession,
    ctx: TriageContext,
    case: TriageCase,
    *,
    event_type: str,
    actor: Principal,
    audit_extra: dict[str, Any] | None = None,
) -> None:
    """Outbox events for a change to a case, and a wake-up for its live streams."""
    items = change_events(ctx, case, event_type=event_type, actor=actor, audit_extra=audit_extra)
    await ctx.outbox.enqueue_documents(session, items)
    await ctx.notifier.publish(session, STREAM_CHANNEL, case.id)


def change_events(
    ctx: TriageContext,
    case: TriageCase,
    *,
    event_type: str,
    actor: Principal,
    audit_extra: dict[str, Any] | None = None,
) -> list[tuple[dict[str, Any], tuple[str, ...]]]:
    """The events telling the router and audit about a change (as JSON documents), each
    with its destination."""
    event = event_document(
        type=event_type,
        source=SERVICE_NAME,
        occurred_at=ctx.clock.now(),
        subject_id=case.id,
        actor=actor,
        data={},
    )
    # One event id for both peers: each deduplicates on its own; the content differs.
    items: list[tuple[dict[str, Any], tuple[str, ...]]] = []
    if event_type in _TO_ROUTER:
        items.append((event | {"data": router_snapshot(case)}, (Peer.CONSULT_ROUTER,)))
    audit_data = audit_summary(case) | (audit_extra or {})
    items.append((event | {"data": audit_data}, (Peer.AUDIT,)))
    return items


async def audit_reads(
    session: AsyncSession,
    ctx: TriageContext,
    cases: list[TriageCase],
    *,
    actor: Principal,
    via: str,
) -> None:
    """One `case.viewed` per case read: who looked, at which case, how, and when."""
    now = ctx.clock.now()
    items = [
        (
            event_document(
                type=EventType.CASE_VIEWED,
                source=SERVICE_NAME,
                occurred_at=now,
                subject_id=case.id,
                actor=actor,
                data={"reference": case.reference, "via": via},
            ),
            (Peer.AUDIT,),
        )
        for case in cases
    ]
    await ctx.outbox.enqueue_documents(session, items)
