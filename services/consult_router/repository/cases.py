"""The router's cases, offers and consults."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from services.shared.db.models import ConsultCase, ConsultConsult, ConsultOffer

OPEN_CASE = ("queued", "offered")


async def get_case(
    session: AsyncSession, case_id: str, *, for_update: bool = False
) -> ConsultCase | None:
    statement = select(ConsultCase).where(ConsultCase.id == case_id)
    if for_update:
        # Every change to a case (routing, accepting, claiming, advising, cancelling)
        # takes this lock first: on PostgreSQL that is what makes one accept win.
        statement = statement.with_for_update()
    return (await session.execute(statement)).scalar_one_or_none()


async def get_cases(
    session: AsyncSession, case_ids: Iterable[str], *, for_update: bool = False
) -> dict[str, ConsultCase]:
    """The cases that exist among `case_ids`, by id; locked in id order when asked, so
    two batches never wait on each other crosswise."""
    statement = select(ConsultCase).where(ConsultCase.id.in_(sorted(case_ids)))
    if for_update:
        statement = statement.order_by(ConsultCase.id).with_for_update()
    return {case.id: case for case in (await session.execute(statement)).scalars()}


async def open_cases(
    session: AsyncSession, *, limit: int, with_snapshot: bool = True
) -> list[ConsultCase]:
    statement = (
        select(ConsultCase)
        .where(ConsultCase.status.in_(OPEN_CASE))
        .order_by(ConsultCase.created_at, ConsultCase.id)
        .limit(limit)
    )
    if not with_snapshot:
        # Ordering and choosing cases need none of the clinical document, the largest part
        # of the row to read and decode; touching it on these rows is an error, not a load.
        statement = statement.options(defer(ConsultCase.snapshot, raiseload=True))
    return list((await session.execute(statement)).scalars())


async def lock_open_case(session: AsyncSession, case_id: str) -> ConsultCase | None:
    """An open case, locked for routing; None if closed or another process is on it.

    Read afresh even if this session has the case already (the routing pass read it
    before taking the lock, without its clinical snapshot): what counts is the row as it
    is once locked."""
    statement = (
        select(ConsultCase)
        .where(ConsultCase.id == case_id, ConsultCase.status.in_(OPEN_CASE))
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def due_escalations(session: AsyncSession, *, now: datetime, limit: int) -> list[ConsultCase]:
    statement = (
        select(ConsultCase)
        .where(ConsultCase.status.in_(OPEN_CASE), ConsultCase.escalate_at <= now)
        .order_by(ConsultCase.escalate_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list((await session.execute(statement)).scalars())


async def get_offer(
    session: AsyncSession, offer_id: str, *, for_update: bool = False
) -> ConsultOffer | None:
    statement = select(ConsultOffer).where(ConsultOffer.id == offer_id)
    if for_update:
        statement = statement.with_for_update()
    return (await session.execute(statement)).scalar_one_or_none()


async def open_offers_for_case(session: AsyncSession, case_id: str) -> list[ConsultOffer]:
    statement = select(ConsultOffer).where(
        ConsultOffer.case_id == case_id, ConsultOffer.state == "open"
    )
    return list((await session.execute(statement)).scalars())


async def open_offers_for_consultant(
    session: AsyncSession, consultant_id: str
) -> list[ConsultOffer]:
    statement = (
        select(ConsultOffer)
        .where(ConsultOffer.consultant_id == consultant_id, ConsultOffer.state == "open")
        .order_by(ConsultOffer.created_at)
    )
    return list((await session.execute(statement)).scalars())


async def open_offer_pairs(session: AsyncSession) -> list[tuple[str, str]]:
    """(case id, consultant id) of every open offer."""
    statement = select(ConsultOffer.case_id, ConsultOffer.consultant_id).where(
        ConsultOffer.state == "open"
    )
    return [(case_id, consultant_id) for case_id, consultant_id in await session.execute(statement)]


async def offers_in_round(session: AsyncSession, case_id: str, round_: int) -> list[ConsultOffer]:
    statement = select(ConsultOffer).where(
        ConsultOffer.case_id == case_id, ConsultOffer.round == round_
    )
    return list((await session.execute(statement)).scalars())


async def expired_offers(session: AsyncSession, *, now: datetime, limit: int) -> list[ConsultOffer]:
    statement = (
        select(ConsultOffer)
        .where(ConsultOffer.state == "open", ConsultOffer.expires_at <= now)
        .order_by(ConsultOffer.expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list((await session.execute(statement)).scalars())


async def close_offer(
    session: AsyncSession, offer_id: str, *, state: str, reason: str | None, at: datetime
) -> bool:
    """Close an offer that is still open; False if it was already closed."""
    result = await session.execute(
        update(ConsultOffer)
        .where(ConsultOffer.id == offer_id, ConsultOffer.state == "open")
        .values(state=state, close_reason=reason, closed_at=at)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


async def get_consult(session: AsyncSession, consult_id: str) -> ConsultConsult | None:
    return await session.get(ConsultConsult, consult_id)


async def consult_for_case(session: AsyncSession, case_id: str) -> ConsultConsult | None:
    statement = select(ConsultConsult).where(ConsultConsult.case_id == case_id)
    return (await session.execute(statement)).scalar_one_or_none()


async def consults_of(
    session: AsyncSession, consultant_id: str, *, since: datetime
) -> list[ConsultConsult]:
    """The consultant's consults still open, and those finished since `since`."""
    statement = (
        select(ConsultConsult)
        .where(
            ConsultConsult.consultant_id == consultant_id,
            (ConsultConsult.advised_at.is_(None) & ConsultConsult.ended_at.is_(None))
            | (ConsultConsult.accepted_at >= since),
        )
        .order_by(ConsultConsult.accepted_at.desc())
        .limit(50)
    )
    return list((await session.execute(statement)).scalars())


async def cases_by_id(session: AsyncSession, ids: Iterable[str]) -> dict[str, ConsultCase]:
    wanted = list(set(ids))
    if not wanted:
        return {}
    statement = select(ConsultCase).where(ConsultCase.id.in_(wanted))
    return {row.id: row for row in (await session.execute(statement)).scalars()}


async def due_advice(session: AsyncSession, *, now: datetime, limit: int) -> list[ConsultConsult]:
    statement = (
        select(ConsultConsult)
        .where(
            ConsultConsult.advice_due_at <= now,
            ConsultConsult.advised_at.is_(None),
            ConsultConsult.ended_at.is_(None),
        )
        .order_by(ConsultConsult.advice_due_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list((await session.execute(statement)).scalars())


async def open_offer_holders(
    session: AsyncSession, case_ids: Iterable[str]
) -> dict[str, list[str]]:
    wanted = list(set(case_ids))
    if not wanted:
        return {}
    statement = select(ConsultOffer.case_id, ConsultOffer.consultant_id).where(
        ConsultOffer.case_id.in_(wanted), ConsultOffer.state == "open"
    )
    holders: dict[str, list[str]] = {}
    for case_id, consultant_id in await session.execute(statement):
        holders.setdefault(case_id, []).append(consultant_id)
    return holders


async def queue_depths(
    session: AsyncSession, *, now: datetime
) -> list[tuple[str, int, datetime | None]]:
    statement = (
        select(ConsultCase.specialty, func.count(), func.min(ConsultCase.created_at))
        .where(ConsultCase.status.in_(OPEN_CASE))
        .group_by(ConsultCase.specialty)
    )
    del now
    return [
        (specialty, int(count), oldest)
        for specialty, count, oldest in await session.execute(statement)
    ]
