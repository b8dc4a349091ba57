"""Consultants, shifts and presence.

The queries of a routing pass are built once (see `repository.cases` for why).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.consult_router.repository.cases import ANOTHER_CASE_MAY_MOVE, OPEN
from services.shared.db.base import table_of
from services.shared.db.models import (
    ConsultConnection,
    ConsultConsult,
    ConsultConsultant,
    ConsultOffer,
    ConsultShift,
)

_CONSULTANT = select(ConsultConsultant).where(ConsultConsultant.id == bindparam("consultant_id"))
_CONSULTANT_LOCKED = _CONSULTANT.with_for_update()
_SHIFTS_ON_AT = (
    select(ConsultShift, ConsultConsultant)
    .join(ConsultConsultant, ConsultConsultant.id == ConsultShift.consultant_id)
    .where(
        ConsultShift.specialty.in_(bindparam("specialties", expanding=True)),
        ConsultShift.starts_at <= bindparam("at"),
        ConsultShift.ends_at > bindparam("at"),
    )
    .order_by(ConsultConsultant.name, ConsultConsultant.id)
)
_SHIFT_TABLE, _CONSULTANT_TABLE = table_of(ConsultShift), table_of(ConsultConsultant)
# What a routing pass needs of who is on call (Core rows: no objects for the session to
# build and track, one pair a consultant and shift, every pass).
_ON_CALL_AT = (
    select(
        _SHIFT_TABLE.c.specialty,
        _CONSULTANT_TABLE.c.id,
        _CONSULTANT_TABLE.c.status,
        _CONSULTANT_TABLE.c.last_assigned_at,
    )
    .join(_CONSULTANT_TABLE, _CONSULTANT_TABLE.c.id == _SHIFT_TABLE.c.consultant_id)
    .where(
        _SHIFT_TABLE.c.specialty.in_(bindparam("specialties", expanding=True)),
        _SHIFT_TABLE.c.starts_at <= bindparam("at"),
        _SHIFT_TABLE.c.ends_at > bindparam("at"),
    )
)


@dataclass(frozen=True, slots=True)
class OnCall:
    """A consultant on shift for a specialty."""

    specialty: str
    consultant_id: str
    status: str
    last_assigned_at: datetime | None


@dataclass(frozen=True, slots=True)
class OnCallToRoute(OnCall):
    """A consultant on shift as a routing pass weighs them: how many consults they hold,
    and whether they are being asked about a case right now."""

    active_consults: int
    holds_offer: bool


_CONSULT_TABLE, _OFFER_TABLE = table_of(ConsultConsult), table_of(ConsultOffer)
# Who is on call with what routing weighs of each, in the one statement: a routing pass
# runs in the transaction that records a new case, where each round trip is latency the
# crew waits through (see `bench/RESULTS.md`).
_ON_CALL_TO_ROUTE_AT = _ON_CALL_AT.add_columns(
    select(func.count())
    .where(
        _CONSULT_TABLE.c.consultant_id == _CONSULTANT_TABLE.c.id,
        _CONSULT_TABLE.c.advised_at.is_(None),
        _CONSULT_TABLE.c.ended_at.is_(None),
    )
    .scalar_subquery(),
    exists().where(
        _OFFER_TABLE.c.consultant_id == _CONSULTANT_TABLE.c.id,
        _OFFER_TABLE.c.state == OPEN,
    ),
)

# The same, and whether the queue holds a case besides the new ones that a pass could move.
_ON_CALL_TO_ROUTE_BESIDE = _ON_CALL_TO_ROUTE_AT.add_columns(ANOTHER_CASE_MAY_MOVE)


_ACTIVE_CONSULT_COUNTS = (
    select(ConsultConsult.consultant_id, func.count())
    .where(
        ConsultConsult.consultant_id.in_(bindparam("consultant_ids", expanding=True)),
        ConsultConsult.advised_at.is_(None),
        ConsultConsult.ended_at.is_(None),
    )
    .group_by(ConsultConsult.consultant_id)
)


async def get_consultant(
    session: AsyncSession, consultant_id: str, *, for_update: bool = False
) -> ConsultConsultant | None:
    statement = _CONSULTANT_LOCKED if for_update else _CONSULTANT
    rows = await session.execute(statement, {"consultant_id": consultant_id})
    return rows.scalar_one_or_none()


async def lock_consultants(
    session: AsyncSession, consultant_ids: Collection[str]
) -> dict[str, ConsultConsultant]:
    """Lock the consultants, in id order, in one statement (so two transactions locking
    several never wait on each other crosswise); those that exist, by id, as locked."""
    statement = (
        select(ConsultConsultant)
        .where(ConsultConsultant.id.in_(sorted(consultant_ids)))
        .order_by(ConsultConsultant.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return {
        consultant.id: consultant for consultant in (await session.execute(statement)).scalars()
    }


async def list_consultants(session: AsyncSession) -> list[ConsultConsultant]:
    statement = select(ConsultConsultant).order_by(ConsultConsultant.name, ConsultConsultant.id)
    return list((await session.execute(statement)).scalars())


async def consultants_by_id(
    session: AsyncSession, ids: Iterable[str]
) -> dict[str, ConsultConsultant]:
    wanted = list(set(ids))
    if not wanted:
        return {}
    statement = select(ConsultConsultant).where(ConsultConsultant.id.in_(wanted))
    return {row.id: row for row in (await session.execute(statement)).scalars()}


async def get_shift(session: AsyncSession, shift_id: str) -> ConsultShift | None:
    return await session.get(ConsultShift, shift_id)


async def list_shifts(
    session: AsyncSession,
    *,
    overlapping_from: datetime | None,
    overlapping_to: datetime | None,
    specialty: str | None,
) -> list[ConsultShift]:
    statement = select(ConsultShift)
    if overlapping_from is not None:
        statement = statement.where(ConsultShift.ends_at > overlapping_from)
    if overlapping_to is not None:
        statement = statement.where(ConsultShift.starts_at < overlapping_to)
    if specialty is not None:
        statement = statement.where(ConsultShift.specialty == specialty)
    statement = statement.order_by(ConsultShift.starts_at, ConsultShift.id).limit(1000)
    return list((await session.execute(statement)).scalars())


async def shifts_on_at(
    session: AsyncSession, *, specialties: Iterable[str], at: datetime
) -> list[tuple[ConsultShift, ConsultConsultant]]:
    """Shifts covering `at` in the given specialties, with their consultants."""
    rows = await session.execute(_SHIFTS_ON_AT, {"specialties": list(specialties), "at": at})
    return [(shift, consultant) for shift, consultant in rows.all()]


async def on_call_at(
    session: AsyncSession, *, specialties: Iterable[str], at: datetime
) -> list[OnCall]:
    """Who is on shift at `at` in the given specialties, with their status; one entry a
    shift."""
    rows = await session.execute(_ON_CALL_AT, {"specialties": list(specialties), "at": at})
    return [OnCall(*row) for row in rows]


async def on_call_to_route_at(
    session: AsyncSession, *, specialties: Iterable[str], at: datetime
) -> list[OnCallToRoute]:
    """Who is on shift at `at` in the given specialties, with their status, the consults
    they hold (accepted, not yet advised, case not ended) and whether they hold an open
    offer; one entry a shift."""
    parameters = {"specialties": list(specialties), "at": at}
    return [_to_route(row) for row in await session.execute(_ON_CALL_TO_ROUTE_AT, parameters)]


def _to_route(row: Sequence[Any]) -> OnCallToRoute:
    """An entry of `_ON_CALL_TO_ROUTE_AT`'s columns (those after them are the caller's)."""
    specialty, consultant_id, status, assigned, active, offered = row[:6]
    return OnCallToRoute(specialty, consultant_id, status, assigned, int(active), bool(offered))


async def on_call_to_route_beside(
    session: AsyncSession, *, specialties: Iterable[str], at: datetime, arrivals: Collection[str]
) -> tuple[list[OnCallToRoute], bool]:
    """`on_call_to_route_at`, and in the same statement whether an open case other than
    `arrivals` (the cases the transaction has just written) could move on a routing pass:
    if none can, a pass routing the arrivals needs no read of the queue. True when nobody
    is on call (no row to say; nobody free either)."""
    parameters = {"specialties": list(specialties), "at": at, "arrivals": sorted(arrivals)}
    rows = list(await session.execute(_ON_CALL_TO_ROUTE_BESIDE, parameters))
    others_may_move = bool(rows[0][-1]) if rows else True
    return [_to_route(row) for row in rows], others_may_move


async def active_consult_counts(
    session: AsyncSession, consultant_ids: Iterable[str]
) -> dict[str, int]:
    """Consults each holds: accepted, not yet advised, case not ended."""
    wanted = list(set(consultant_ids))
    if not wanted:
        return {}
    rows = await session.execute(_ACTIVE_CONSULT_COUNTS, {"consultant_ids": wanted})
    counts = {consultant_id: int(count) for consultant_id, count in rows}
    return {consultant_id: counts.get(consultant_id, 0) for consultant_id in wanted}


async def connected_consultants(
    session: AsyncSession, *, seen_since: datetime, among: Collection[str] | None = None
) -> set[str]:
    """Who has a live connection; only `among` these consultants when given (one
    consultant's welcome must not read every connection in the building)."""
    statement = select(ConsultConnection.consultant_id).where(
        ConsultConnection.last_seen_at >= seen_since
    )
    if among is not None:
        statement = statement.where(ConsultConnection.consultant_id.in_(among)).distinct()
    return set((await session.execute(statement)).scalars())


async def add_connection(session: AsyncSession, connection: ConsultConnection) -> None:
    session.add(connection)
    await session.flush()


async def touch_replica_connections(
    session: AsyncSession, replica_id: str, *, at: datetime
) -> None:
    await session.execute(
        update(ConsultConnection)
        .where(ConsultConnection.replica_id == replica_id)
        .values(last_seen_at=at)
    )


async def remove_connection(session: AsyncSession, connection_id: str) -> str | None:
    """Delete one connection; returns its consultant's id (None if already gone)."""
    connection = await session.get(ConsultConnection, connection_id)
    if connection is None:
        return None
    consultant_id = connection.consultant_id
    await session.delete(connection)
    await session.flush()
    return consultant_id


async def connection_count(
    session: AsyncSession, consultant_id: str, *, seen_since: datetime
) -> int:
    statement = select(func.count()).where(
        ConsultConnection.consultant_id == consultant_id,
        ConsultConnection.last_seen_at >= seen_since,
    )
    return int((await session.execute(statement)).scalar_one())


async def remove_stale_connections(session: AsyncSession, *, seen_before: datetime) -> set[str]:
    """Delete presences nobody has refreshed (their process died); returns whose."""
    statement = (
        select(ConsultConnection.id, ConsultConnection.consultant_id)
        .where(ConsultConnection.last_seen_at < seen_before)
        .with_for_update(skip_locked=True)
    )
    rows = (await session.execute(statement)).all()
    if not rows:
        return set()
    await session.execute(
        delete(ConsultConnection).where(ConsultConnection.id.in_([row.id for row in rows]))
    )
    return {row.consultant_id for row in rows}
