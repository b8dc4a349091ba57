"""Read models: a consultant's whole state (the `welcome` message and `GET
/v1/consultant`) and one consult. The open queue is read by `QueueLines`."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from services.consult_router import outbound
from services.consult_router.context import RouterContext
from services.consult_router.repository import cases as case_repo
from services.consult_router.repository import messages as message_repo
from services.consult_router.rota import describe
from services.consult_router.schemas import ConsultantSnapshot, ConsultRead, OfferRead
from services.consult_router.views import consult_read, offer_read
from services.shared.auth import Principal
from services.shared.db.models import ConsultConsultant
from services.shared.domain.vocabulary import Role
from services.shared.errors import NotFound

RECENT_CONSULTS = timedelta(hours=12)


async def consultant_snapshot(
    session: AsyncSession, ctx: RouterContext, consultant: ConsultConsultant, *, via: str
) -> ConsultantSnapshot:
    """The consultant's state, shown to them `via` the welcome or the REST twin; each case
    it shows (an offer's summary, a consult's whole case) is a read, audited."""
    # The seq first: anything logged after it is sent after the snapshot, so nothing
    # falls between the two.
    last_seq = await message_repo.last_seq(session, consultant.id)
    offers = await case_repo.open_offers_for_consultant(session, consultant.id)
    consults = await case_repo.consults_of(
        session, consultant.id, since=ctx.clock.now() - RECENT_CONSULTS
    )
    cases = await case_repo.cases_by_id(
        session, [o.case_id for o in offers] + [c.case_id for c in consults]
    )
    await outbound.audit_case_reads(session, ctx, cases.values(), reader=consultant.id, via=via)
    return ConsultantSnapshot(
        consultant=await describe(session, ctx, consultant),
        offers=[offer_read(o, cases[o.case_id]) for o in offers if o.case_id in cases],
        consults=[consult_read(c, cases[c.case_id]) for c in consults if c.case_id in cases],
        last_seq=last_seq,
    )


async def open_offers(
    session: AsyncSession, ctx: RouterContext, consultant: ConsultConsultant, *, via: str
) -> list[OfferRead]:
    """The consultant's open offers, each case's summary a read, audited."""
    offers = await case_repo.open_offers_for_consultant(session, consultant.id)
    cases = await case_repo.cases_by_id(session, [o.case_id for o in offers])
    await outbound.audit_case_reads(session, ctx, cases.values(), reader=consultant.id, via=via)
    return [offer_read(o, cases[o.case_id]) for o in offers if o.case_id in cases]


async def read_consult(
    session: AsyncSession, ctx: RouterContext, *, consult_id: str, actor: Principal
) -> ConsultRead:
    """One consult with its full case, for its consultant (or operations); audited."""
    consult = await case_repo.get_consult(session, consult_id)
    allowed = consult is not None and (
        consult.consultant_id == actor.sub or actor.role in (Role.COORDINATOR, Role.ADMIN)
    )
    if consult is None or not allowed:
        raise NotFound("no such consult")
    case = await case_repo.get_case(session, consult.case_id)
    if case is None:
        raise NotFound("no such consult")
    await outbound.audit_case_read(
        session, ctx, case, reader=actor.sub, role=str(actor.role), via="consult"
    )
    return consult_read(consult, case)
