"""What consultants do: set their status, accept or decline offers, claim from the
queue, give advice.

Accepting and claiming both lock the case row and insert the one consult a case may
have (a unique constraint), so however many accept at once, on however many processes,
exactly one wins and the rest get 409.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from services.consult_router import outbound
from services.consult_router.cases import withdraw_open_offers
from services.consult_router.context import RouterContext
from services.consult_router.presence import release_offers
from services.consult_router.repository import cases as case_repo
from services.consult_router.repository import rota as rota_repo
from services.consult_router.schemas import AdviceCreate
from services.consult_router.views import consult_read, full_case
from services.shared.auth import Principal
from services.shared.db.models import ConsultCase, ConsultConsult, ConsultConsultant, ConsultOffer
from services.shared.db.session import after_commit
from services.shared.db.statements import insert_if_absent
from services.shared.domain.vocabulary import ConsultantStatus, Disposition
from services.shared.errors import Conflict, NotFound
from services.shared.ids import new_id
from services.shared.schemas.events import EventType

logger = logging.getLogger("reach.router")


async def registered(
    session: AsyncSession, consultant_id: str, *, for_update: bool = False
) -> ConsultConsultant:
    consultant = await rota_repo.get_consultant(session, consultant_id, for_update=for_update)
    if consultant is None:
        raise NotFound("you are not on the rota; ask an administrator", code="not_on_rota")
    return consultant


async def set_status(
    session: AsyncSession, *, ctx: RouterContext, actor: Principal, status: ConsultantStatus
) -> ConsultConsultant:
    if status != ConsultantStatus.AVAILABLE:
        await case_repo.lock_cases_offered_to(session, [actor.sub])  # before the consultant
    consultant = await registered(session, actor.sub, for_update=True)
    if consultant.status != status:
        consultant.status = status
        consultant.status_changed_at = ctx.clock.now()
    if status != ConsultantStatus.AVAILABLE:
        await release_offers(session, ctx, consultant.id, reason="reassigned")
    await outbound.wake_routing(session, ctx)
    return consultant


async def accept_offer(
    session: AsyncSession, *, ctx: RouterContext, actor: Principal, offer_id: str
) -> ConsultConsult:
    offer = await case_repo.get_offer(session, offer_id)
    if offer is None or offer.consultant_id != actor.sub:
        raise NotFound("no such offer")
    case = await case_repo.get_case(session, offer.case_id, for_update=True)
    # Read again under the case's lock: another accept may have closed it meanwhile.
    offer = await case_repo.get_offer(session, offer_id, for_update=True)
    if case is None or offer is None:
        raise NotFound("no such offer")
    _check_still_open(offer, ctx)
    await _lock_everyone_told(session, case, actor.sub)
    consultant = await registered(session, actor.sub, for_update=True)
    consult = await _take(session, ctx, case, consultant, via="offer", offer=offer, actor=actor)
    return consult


def _check_still_open(offer: ConsultOffer, ctx: RouterContext) -> None:
    if offer.state == "open" and offer.expires_at > ctx.clock.now():
        return
    if offer.state in ("expired", "open") or offer.close_reason == "expired":
        raise Conflict("the offer's time ran out", code="offer_expired")
    raise Conflict("the case went to someone else or was withdrawn", code="offer_taken")


async def decline_offer(
    session: AsyncSession, *, ctx: RouterContext, actor: Principal, offer_id: str, has_reason: bool
) -> None:
    offer = await case_repo.get_offer(session, offer_id)
    if offer is None or offer.consultant_id != actor.sub:
        raise NotFound("no such offer")
    case = await case_repo.get_case(session, offer.case_id, for_update=True)
    if case is None:
        raise NotFound("no such offer")
    if not await case_repo.close_offer(
        session, offer, state="declined", reason="declined", at=ctx.clock.now()
    ):
        return  # already closed: declining again changes nothing
    outbound.count_offer(session, ctx, "declined")
    # The reason's words stay with the consultant: audit learns only that one was given.
    await outbound.announce_offer(
        session, ctx, offer, case, EventType.OFFER_DECLINED,
        reason="with_reason" if has_reason else "without_reason",
    )  # fmt: skip
    await outbound.wake_routing(session, ctx)


async def claim_case(
    session: AsyncSession, *, ctx: RouterContext, actor: Principal, case_id: str
) -> ConsultConsult:
    case = await case_repo.get_case(session, case_id, for_update=True)
    if case is None:
        raise NotFound("no such case")
    if case.status not in ("queued", "offered"):
        raise Conflict("someone else has the case, or it has ended", code="case_taken")
    await _lock_everyone_told(session, case, actor.sub)
    consultant = await registered(session, actor.sub, for_update=True)
    return await _take(session, ctx, case, consultant, via="claim", offer=None, actor=actor)


async def _lock_everyone_told(session: AsyncSession, case: ConsultCase, taker_id: str) -> None:
    """Lock, at once and in id order, the consultant taking the case and those holding
    its other offers, whom the take tells their offer is withdrawn. One by one (the taker,
    then each holder as told), two consultants taking two cases each offered to the other
    would wait on each other crosswise."""
    holders = (await case_repo.open_offer_holders(session, [case.id])).get(case.id, [])
    await rota_repo.lock_consultants(session, {taker_id, *holders})


async def _take(
    session: AsyncSession,
    ctx: RouterContext,
    case: ConsultCase,
    consultant: ConsultConsultant,
    *,
    via: str,
    offer: ConsultOffer | None,
    actor: Principal,
) -> ConsultConsult:
    now = ctx.clock.now()
    taken_code = "offer_taken" if via == "offer" else "case_taken"
    if case.status not in ("queued", "offered"):
        raise Conflict("someone else has the case, or it has ended", code=taken_code)
    active = (await rota_repo.active_consult_counts(session, [consultant.id]))[consultant.id]
    if active >= ctx.settings.consult_limit:
        raise Conflict("finish your current case first", code="consult_limit")
    consult_id = new_id()
    values = {
        "id": consult_id, "case_id": case.id, "consultant_id": consultant.id, "via": via,
        "offer_id": offer.id if offer else None, "accepted_at": now,
        "advice_due_at": now + timedelta(seconds=ctx.settings.advice_overdue_seconds),
        "advised_at": None, "risk_override": False, "ended_at": None,
    }  # fmt: skip
    if not await insert_if_absent(session, ConsultConsult, values):
        raise Conflict("someone else has the case", code=taken_code)
    if offer is not None:
        await case_repo.close_offer(session, offer, state="accepted", reason="accepted", at=now)
        outbound.count_offer(session, ctx, "accepted")
    await withdraw_open_offers(session, ctx, case=case, reason="accepted_elsewhere")
    case.status = "accepted"
    case.accepted_at = now
    case.escalate_at = None
    consultant.last_assigned_at = now
    consult = await case_repo.get_consult(session, consult_id)
    assert consult is not None  # noqa: S101 -- inserted just now
    await outbound.announce_status(
        session, ctx, case, EventType.CONSULT_ACCEPTED,
        consult=consult, consultant=consultant, actor=actor, via=via,
    )  # fmt: skip
    waited, specialty = (now - case.created_at).total_seconds(), case.specialty
    after_commit(session, lambda: ctx.metrics.time_to_accept.labels(specialty).observe(waited))
    case_id, consultant_id = case.id, consultant.id
    after_commit(
        session,
        lambda: logger.info(
            "case %s accepted by %s (%s) after %.0f s", case_id, consultant_id, via, waited
        ),
    )
    await outbound.show_consultant(
        session, ctx, consultant.id, "assigned",
        {"consult_id": consult.id, "case": full_case(case)}, case=case, via="assigned",
    )  # fmt: skip
    await outbound.queue_changed(session, ctx)
    return consult


async def give_advice(
    session: AsyncSession,
    *,
    ctx: RouterContext,
    actor: Principal,
    consult_id: str,
    payload: AdviceCreate,
) -> ConsultConsult:
    consult = await case_repo.get_consult(session, consult_id)
    if consult is None or consult.consultant_id != actor.sub:
        raise NotFound("no such consult")
    case = await case_repo.get_case(session, consult.case_id, for_update=True)
    if case is None:
        raise NotFound("no such consult")
    if consult.advised_at is not None:
        raise Conflict("advice was already given for this case", code="already_advised")
    if consult.ended_at is not None or case.status == "cancelled":
        raise Conflict("the crew cancelled this case", code="case_cancelled")
    flags = list(case.snapshot.get("risk_flags", []))
    overriding = bool(flags) and payload.disposition != Disposition.CONVEY_ED
    if overriding and not payload.confirm_risk_override:
        raise Conflict(
            "the case carries risk flags: confirm to advise against conveying",
            code="risk_override_required",
            extra={"risk_flags": flags},
        )
    now = ctx.clock.now()
    consultant = await registered(session, actor.sub)
    consult.advised_at = now
    consult.advice_due_at = None
    consult.disposition = str(payload.disposition)
    consult.pathway = str(payload.pathway) if payload.pathway else None
    consult.advice = payload.advice or None
    consult.safety_netting = payload.safety_netting or None
    consult.risk_override = overriding
    case.status = "advised"
    await outbound.announce_status(
        session, ctx, case, EventType.CONSULT_ADVISED,
        consult=consult, consultant=consultant, actor=actor,
        disposition=payload.disposition, pathway=payload.pathway,
        advice=consult.advice, safety_netting=consult.safety_netting, risk_override=overriding,
    )  # fmt: skip
    await outbound.tell_consultant(
        session, ctx, consultant.id, "case_updated",
        consult_read(consult, case).model_dump(mode="json"),
    )  # fmt: skip
    decided, case_id = consult.disposition, case.id
    after_commit(
        session,
        lambda: logger.info(
            "case %s advised by %s: %s%s", case_id, actor.sub, decided,
            " (risk flags overridden)" if overriding else "",
        ),
    )  # fmt: skip
    await outbound.wake_routing(session, ctx)  # the consultant is free for the next case
    await outbound.queue_changed(session, ctx)
    return consult
