"""What a consultant does over HTTP: the REST twins of the websocket, the queue, advice."""

from __future__ import annotations

from fastapi import APIRouter, Response

from services.consult_router import consults, snapshots
from services.consult_router.deps import ConsultReader, ContextDep, CurrentConsultant, QueueReader
from services.consult_router.rota import describe
from services.consult_router.schemas import (
    AcceptResult,
    AdviceCreate,
    ConsultantRead,
    ConsultantSnapshot,
    ConsultRead,
    DeclineRequest,
    OfferRead,
    QueueRead,
    StatusUpdate,
)
from services.shared.db.session import SessionDep, TransactionalRoute
from services.shared.errors import error_responses

router = APIRouter(tags=["consultants"], route_class=TransactionalRoute)


@router.get("/v1/consultant", responses=error_responses(401, 403, 404))
async def me(
    session: SessionDep, ctx: ContextDep, consultant: CurrentConsultant
) -> ConsultantSnapshot:
    """Your status, your open offers and your consults: what `welcome` carries."""
    found = await consults.registered(session, consultant.sub)
    return await snapshots.consultant_snapshot(session, ctx, found, via="consultant")


@router.put("/v1/consultant/status", responses=error_responses(401, 403, 404, 422))
async def put_status(
    payload: StatusUpdate, session: SessionDep, ctx: ContextDep, consultant: CurrentConsultant
) -> ConsultantRead:
    """Say whether you are available for offers. Busy or away withdraws your open offers."""
    updated = await consults.set_status(session, ctx=ctx, actor=consultant, status=payload.status)
    return await describe(session, ctx, updated)


@router.get("/v1/consultant/offers", responses=error_responses(401, 403, 404))
async def my_offers(
    session: SessionDep, ctx: ContextDep, consultant: CurrentConsultant
) -> list[OfferRead]:
    """Your open offers, for clients without a socket."""
    found = await consults.registered(session, consultant.sub)
    return await snapshots.open_offers(session, ctx, found, via="offers")


@router.post("/v1/offers/{offer_id}/accept", responses=error_responses(401, 403, 404, 409))
async def accept(
    offer_id: str, session: SessionDep, ctx: ContextDep, consultant: CurrentConsultant
) -> AcceptResult:
    """Take the offered case. The first accept wins; a late one is 409 `offer_taken`, an
    expired one 409 `offer_expired`."""
    consult = await consults.accept_offer(session, ctx=ctx, actor=consultant, offer_id=offer_id)
    return AcceptResult(consult_id=consult.id)


@router.post("/v1/offers/{offer_id}/decline", responses=error_responses(401, 403, 404, 422))
async def decline(
    offer_id: str,
    payload: DeclineRequest,
    session: SessionDep,
    ctx: ContextDep,
    consultant: CurrentConsultant,
) -> dict[str, str]:
    """Let the offer go; the case moves on to the next consultant at once."""
    await consults.decline_offer(
        session, ctx=ctx, actor=consultant, offer_id=offer_id, has_reason=bool(payload.reason)
    )
    return {"status": "declined"}


@router.get("/v1/queue", response_model=QueueRead, responses=error_responses(401, 403))
async def queue(session: SessionDep, ctx: ContextDep, _reader: QueueReader) -> Response:
    """Every open case: status, priority, NEWS2, how long it has waited, who holds it."""
    # The items as the dashboards' sockets receive them, encoded once (`QueueLines`).
    items = await ctx.queue_lines.encoded(await session.connection(), now=ctx.clock.now())
    return Response(content=f'{{"items":{items}}}', media_type="application/json")


@router.post("/v1/queue/{case_id}/claim", responses=error_responses(401, 403, 404, 409))
async def claim(
    case_id: str, session: SessionDep, ctx: ContextDep, consultant: CurrentConsultant
) -> AcceptResult:
    """Take an open case straight from the queue; 409 `case_taken` if someone has it."""
    consult = await consults.claim_case(session, ctx=ctx, actor=consultant, case_id=case_id)
    return AcceptResult(consult_id=consult.id)


@router.get("/v1/consults/{consult_id}", responses=error_responses(401, 403, 404))
async def get_consult(
    consult_id: str, session: SessionDep, ctx: ContextDep, reader: ConsultReader
) -> ConsultRead:
    """One consult with the full case. Every read is recorded in the audit trail."""
    return await snapshots.read_consult(session, ctx, consult_id=consult_id, actor=reader)


@router.post("/v1/consults/{consult_id}/advice", responses=error_responses(401, 403, 404, 409, 422))
async def advise(
    consult_id: str,
    payload: AdviceCreate,
    session: SessionDep,
    ctx: ContextDep,
    consultant: CurrentConsultant,
) -> ConsultRead:
    """Record advice and where the patient goes. For a case with risk flags and any
    disposition but `convey_ed`, the first answer is 409 `risk_override_required` listing
    the flags; send again with `confirm_risk_override: true` to record the override."""
    await consults.give_advice(
        session, ctx=ctx, actor=consultant, consult_id=consult_id, payload=payload
    )
    return await snapshots.read_consult(session, ctx, consult_id=consult_id, actor=consultant)
