"""triage_api's queries. Nothing else in the service writes SQL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.shared.db.base import table_of
from services.shared.db.models import TriageCase, TriageCaseEvent, TriageObservation
from services.shared.db.session import insert_at_commit
from services.shared.db.statements import insert_if_absent, insert_many_if_absent

# Built once: every change to a case reads it this way first (building a statement and
# its cache key cost about 40 us a call).
_CASE = select(TriageCase).where(TriageCase.id == bindparam("case_id"))
# Every change to a case takes its row lock first, so stream seqs never collide.
_CASE_LOCKED = _CASE.with_for_update()
# New cases' first rows: plain inserts on the tables (Core: see `table_of`).
_INSERT_CASES = insert(table_of(TriageCase))
_INSERT_OBSERVATIONS = insert(table_of(TriageObservation))
_INSERT_EVENTS = insert(table_of(TriageCaseEvent))


async def get_case(
    session: AsyncSession, case_id: str, *, for_update: bool = False
) -> TriageCase | None:
    statement = _CASE_LOCKED if for_update else _CASE
    return (await session.execute(statement, {"case_id": case_id})).scalar_one_or_none()


async def find_by_idempotency_key(
    session: AsyncSession, *, paramedic_id: str, key: str
) -> TriageCase | None:
    statement = select(TriageCase).where(
        TriageCase.paramedic_id == paramedic_id, TriageCase.idempotency_key == key
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def list_cases(
    session: AsyncSession,
    *,
    paramedic_id: str | None,
    before: tuple[datetime, str] | None,
    limit: int,
) -> list[TriageCase]:
    """Newest first; `before` is the (created_at, id) of the last case already shown."""
    statement = select(TriageCase)
    if paramedic_id is not None:
        statement = statement.where(TriageCase.paramedic_id == paramedic_id)
    if before is not None:
        created_at, case_id = before
        statement = statement.where(
            or_(
                TriageCase.created_at < created_at,
                and_(TriageCase.created_at == created_at, TriageCase.id < case_id),
            )
        )
    statement = statement.order_by(TriageCase.created_at.desc(), TriageCase.id.desc()).limit(limit)
    return list((await session.execute(statement)).scalars())


async def insert_case_if_new(session: AsyncSession, values: dict[str, Any]) -> bool:
    """Insert a case unless its idempotency key or reference is taken; True if inserted."""
    return await insert_if_absent(session, TriageCase, values)


async def insert_cases_if_new(session: AsyncSession, rows: list[dict[str, Any]]) -> set[str]:
    """Insert the cases whose idempotency key and reference are free, in one statement;
    the ids of those inserted."""
    return await insert_many_if_absent(session, TriageCase, rows, returning="id")


async def insert_cases_at_commit(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """New cases, written at the commit with their first rows and their outbox rows (on
    PostgreSQL all in the one statement that wakes the delivery lanes). A case whose
    idempotency key or reference is taken fails that statement, and the commit with it:
    for callers who then write them with their keys told apart (`GroupCommit`)."""
    await insert_at_commit(session, _INSERT_CASES, rows)


async def insert_first_rows(
    session: AsyncSession, *, observations: list[dict[str, Any]], events: list[dict[str, Any]]
) -> None:
    """New cases' first observation sets and the first events of their streams, written at
    the commit: nothing in the transaction reads them back, and on PostgreSQL they ride
    with the cases' outbox rows in the statement that wakes the delivery lanes (one round
    trip, and one statement executed, for a batch, where each row was one of each)."""
    if observations:
        await insert_at_commit(session, _INSERT_OBSERVATIONS, observations)
    if events:
        await insert_at_commit(session, _INSERT_EVENTS, events)


async def append_event(
    session: AsyncSession,
    case: TriageCase,
    *,
    type: str,
    at: datetime,
    data: dict[str, Any],
) -> None:
    """The next event on the case's stream, written at the commit (on PostgreSQL riding
    with the change's outbox rows and its stream's wake-up, as a new case's first event
    does: a round trip fewer for every change). The caller holds the case's row lock, and
    the case is written already: the event goes in before the session's last flush, so a
    case only added to the session would not be there yet."""
    case.event_seq += 1
    row = {"case_id": case.id, "seq": case.event_seq, "type": type, "at": at, "data": data}
    await insert_at_commit(session, _INSERT_EVENTS, [row])


async def newest_event_seqs(session: AsyncSession, case_ids: list[str]) -> dict[str, int]:
    """Each case's newest stream seq, in one statement."""
    statement = select(TriageCase.id, TriageCase.event_seq).where(TriageCase.id.in_(case_ids))
    return {row.id: int(row.event_seq) for row in await session.execute(statement)}


async def events_after(
    session: AsyncSession, case_id: str, *, after: int, limit: int
) -> list[TriageCaseEvent]:
    statement = (
        select(TriageCaseEvent)
        .where(TriageCaseEvent.case_id == case_id, TriageCaseEvent.seq > after)
        .order_by(TriageCaseEvent.seq)
        .limit(limit)
    )
    return list((await session.execute(statement)).scalars())
