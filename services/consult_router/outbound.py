"""What consult_router tells its peers and its consultants.

To triage_api (the crew's stream): `consult.*` with the advice text. To audit: the same
events without clinical free text, plus `offer.*`. To a consultant: a numbered message in
their log, and a wake-up for their sockets.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.consult_router import SERVICE_NAME
from services.consult_router.context import (
    CONSULTANT_CHANNEL,
    QUEUE_CHANNEL,
    WORK_CHANNEL,
    RouterContext,
)
from services.consult_router.recent_messages import LoggedMessage
from services.consult_router.repository import messages as message_repo
from services.shared.auth import Principal
from services.shared.clients.peers import Peer
from services.shared.db.models import ConsultCase, ConsultConsult, ConsultConsultant, ConsultOffer
from services.shared.db.session import after_commit
from services.shared.schemas.consults import ConsultantSummary, ConsultStatus, OfferEvent
from services.shared.schemas.events import Event, EventActor, EventType


async def tell_consultant(
    session: AsyncSession,
    ctx: RouterContext,
    consultant_id: str,
    kind: str,
    payload: dict[str, Any],
) -> int:
    """A numbered message for every socket of the consultant, on any process."""
    seq = await message_repo.append(
        session, consultant_id, type=kind, payload=payload, at=ctx.clock.now()
    )
    await told_consultant(session, ctx, consultant_id, LoggedMessage(seq, kind, payload))
    return seq


async def show_consultant(
    session: AsyncSession,
    ctx: RouterContext,
    consultant_id: str,
    kind: str,
    payload: dict[str, Any],
    *,
    case: ConsultCase,
    via: str,
) -> None:
    """A message that shows the consultant `case` (`tell_consultant`), and the read it is
    for the audit trail."""
    await tell_consultant(session, ctx, consultant_id, kind, payload)
    await audit_case_read(session, ctx, case, reader=consultant_id, via=via)


async def told_consultant(
    session: AsyncSession, ctx: RouterContext, consultant_id: str, message: LoggedMessage
) -> None:
    """A message appended to the consultant's log (`tell_consultant`, or with the offer
    it tells of): their sockets here and on any process are woken for it at the commit."""
    # Kept before the wake-up goes out (callbacks run in order), so this process's sockets
    # find it kept when they wake.
    after_commit(session, lambda: ctx.recent_messages.committed(consultant_id, message))
    await ctx.notifier.publish(session, CONSULTANT_CHANNEL, consultant_id)


def count_offer(session: AsyncSession, ctx: RouterContext, outcome: str) -> None:
    """Count an offer's outcome once the change commits (a rolled-back one never was)."""
    after_commit(session, lambda: ctx.metrics.offers.labels(outcome).inc())


async def wake_routing(session: AsyncSession, ctx: RouterContext) -> None:
    await ctx.notifier.publish(session, WORK_CHANNEL, "")


async def queue_changed(session: AsyncSession, ctx: RouterContext) -> None:
    await ctx.notifier.publish(session, QUEUE_CHANNEL, "")


async def announce_status(
    session: AsyncSession,
    ctx: RouterContext,
    case: ConsultCase,
    event_type: str,
    *,
    consult: ConsultConsult | None = None,
    consultant: ConsultConsultant | None = None,
    actor: Principal | None = None,
    counted: bool = False,
    **details: Any,
) -> None:
    """A `consult.*` status for the crew's stream (with advice) and audit (without).
    `counted`: the case's router version counts this status already (written with it)."""
    now = ctx.clock.now()
    if not counted:
        case.router_version += 1
    status = ConsultStatus(
        router_version=case.router_version,
        at=now,
        consult_id=consult.id if consult else None,
        specialty=case.specialty,
        consultant=ConsultantSummary(id=consultant.id, name=consultant.name)
        if consultant
        else None,
        case_reference=case.reference,
        call_category=case.call_category,
        case_created_at=case.created_at,
        accepted_at=case.accepted_at,
        risk_flags=list(case.snapshot.get("risk_flags", [])),
        **details,
    )
    event = Event.new(
        type=event_type,
        source=SERVICE_NAME,
        occurred_at=now,
        subject_id=case.id,
        actor=EventActor.of(actor) if actor else None,
    )
    for_crew = event.model_copy(update={"data": status.model_dump(mode="json")})
    redacted = status.model_copy(update={"advice": None, "safety_netting": None})
    for_audit = event.model_copy(update={"data": redacted.model_dump(mode="json")})
    await ctx.outbox.enqueue_each(
        session, [(for_crew, (Peer.TRIAGE_API,)), (for_audit, (Peer.AUDIT,))]
    )


async def announce_offer(
    session: AsyncSession,
    ctx: RouterContext,
    offer: ConsultOffer,
    case: ConsultCase,
    event_type: str,
    *,
    reason: str | None = None,
    at: datetime | None = None,
) -> None:
    """An `offer.*` event for audit: who was offered which case, and how it ended."""
    data = OfferEvent(
        offer_id=offer.id,
        consultant_id=offer.consultant_id,
        specialty=case.specialty,
        at=at or ctx.clock.now(),
        expires_at=offer.expires_at,
        broadcast=offer.broadcast,
        reason=reason,
    )
    event = Event.new(
        type=event_type,
        source=SERVICE_NAME,
        occurred_at=data.at,
        subject_id=case.id,
        actor=EventActor(sub=offer.consultant_id, role="consultant"),
        data=data.model_dump(mode="json"),
    )
    await ctx.outbox.enqueue(session, event, destinations=(Peer.AUDIT,))


async def audit_case_read(
    session: AsyncSession,
    ctx: RouterContext,
    case: ConsultCase,
    *,
    reader: str,
    via: str,
    role: str = "consultant",
) -> None:
    """Someone was shown the case: a `case.viewed` for the audit trail."""
    await audit_case_reads(session, ctx, [case], reader=reader, via=via, role=role)


async def audit_case_reads(
    session: AsyncSession,
    ctx: RouterContext,
    cases: Iterable[ConsultCase],
    *,
    reader: str,
    via: str,
    role: str = "consultant",
) -> None:
    """Someone was shown these cases at once (a welcome, a list): one `case.viewed` for
    each, written together."""
    now = ctx.clock.now()
    events = [
        Event.new(
            type=EventType.CASE_VIEWED,
            source=SERVICE_NAME,
            occurred_at=now,
            subject_id=case.id,
            actor=EventActor(sub=reader, role=role),
            data={"reference": case.reference, "via": via},
        )
        for case in cases
    ]
    if events:
        await ctx.outbox.enqueue_each(session, [(event, (Peer.AUDIT,)) for event in events])
