"""The rota: consultants, their shifts per specialty, and who is on call.

Shifts are stored in UTC and entered and shown in Europe/London. A time without an offset
is read on London's wall clock; one that does not exist (01:30 on the March change) or
happens twice (01:30 on the October change) is refused unless it carries its offset.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from services.consult_router.context import RouterContext
from services.consult_router.outbound import wake_routing
from services.consult_router.repository import rota as rota_repo
from services.consult_router.schemas import (
    ConsultantRead,
    ConsultantUpsert,
    OnCallEntry,
    OnCallRead,
    ShiftCreate,
    ShiftRead,
)
from services.consult_router.views import consultant_read, london, shift_read
from services.shared.db.models import ConsultConsultant, ConsultShift
from services.shared.domain.vocabulary import FALLBACK_SPECIALTY, ConsultantStatus, Specialty
from services.shared.errors import NotFound, Unprocessable
from services.shared.ids import new_id

LONDON = ZoneInfo("Europe/London")
LONGEST_SHIFT = timedelta(days=7)


def wall_clock_to_utc(moment: datetime, *, field: str) -> datetime:
    """A shift time in UTC: offsets are honoured, naive times are London wall-clock."""
    # A rota is planned in this century; a far-off year is a typing error (and year 1
    # or 9999 cannot even be shown in London time).
    if not 2000 <= moment.year < 2200:
        raise _field_error(field, "must be between the years 2000 and 2199")
    if moment.tzinfo is not None:
        return moment.astimezone(UTC)
    first = moment.replace(tzinfo=LONDON, fold=0)
    second = moment.replace(tzinfo=LONDON, fold=1)
    if first.utcoffset() != second.utcoffset():
        raise _field_error(field, "happens twice in Europe/London (clocks go back); add the offset")
    round_trip = first.astimezone(UTC).astimezone(LONDON).replace(tzinfo=None)
    if round_trip != moment:
        raise _field_error(field, "does not exist in Europe/London (clocks go forward)")
    return first.astimezone(UTC)


def _field_error(field: str, message: str) -> Unprocessable:
    return Unprocessable(
        f"{field} {message}", extra={"fields": [{"path": field, "message": message}]}
    )


async def upsert_consultant(
    session: AsyncSession, *, ctx: RouterContext, consultant_id: str, payload: ConsultantUpsert
) -> ConsultantRead:
    now = ctx.clock.now()
    consultant = await rota_repo.get_consultant(session, consultant_id, for_update=True)
    specialties = sorted({str(s) for s in payload.specialties})
    if consultant is None:
        consultant = ConsultConsultant(
            id=consultant_id,
            name=payload.name,
            grade=payload.grade,
            specialties=specialties,
            status=ConsultantStatus.AWAY,
            status_changed_at=now,
            last_assigned_at=None,
            message_seq=0,
            created_at=now,
            updated_at=now,
        )
        session.add(consultant)
    else:
        consultant.name, consultant.grade = payload.name, payload.grade
        consultant.specialties = specialties
        consultant.updated_at = now
    await session.flush()
    return await describe(session, ctx, consultant)


async def describe(
    session: AsyncSession, ctx: RouterContext, consultant: ConsultConsultant
) -> ConsultantRead:
    seen_since = ctx.clock.now() - timedelta(seconds=ctx.settings.presence_stale_seconds)
    connected = consultant.id in await rota_repo.connected_consultants(
        session, seen_since=seen_since, among=[consultant.id]
    )
    counts = await rota_repo.active_consult_counts(session, [consultant.id])
    return consultant_read(consultant, connected=connected, active_consults=counts[consultant.id])


async def list_consultants(session: AsyncSession, *, ctx: RouterContext) -> list[ConsultantRead]:
    consultants = await rota_repo.list_consultants(session)
    seen_since = ctx.clock.now() - timedelta(seconds=ctx.settings.presence_stale_seconds)
    connected = await rota_repo.connected_consultants(session, seen_since=seen_since)
    counts = await rota_repo.active_consult_counts(session, [c.id for c in consultants])
    return [
        consultant_read(c, connected=c.id in connected, active_consults=counts.get(c.id, 0))
        for c in consultants
    ]


async def create_shift(
    session: AsyncSession, *, ctx: RouterContext, payload: ShiftCreate
) -> ShiftRead:
    starts_at = wall_clock_to_utc(payload.starts_at, field="starts_at")
    ends_at = wall_clock_to_utc(payload.ends_at, field="ends_at")
    if ends_at <= starts_at:
        raise _field_error("ends_at", "must be after starts_at")
    if ends_at - starts_at > LONGEST_SHIFT:
        raise _field_error("ends_at", "a shift is at most seven days long")
    consultant = await rota_repo.get_consultant(session, payload.consultant_id)
    if consultant is None:
        raise _field_error("consultant_id", "is not a consultant on the rota")
    if str(payload.specialty) not in consultant.specialties:
        raise _field_error("specialty", "is not one of the consultant's specialties")
    shift = ConsultShift(
        id=new_id(),
        consultant_id=consultant.id,
        specialty=str(payload.specialty),
        starts_at=starts_at,
        ends_at=ends_at,
        created_at=ctx.clock.now(),
    )
    session.add(shift)
    await session.flush()
    # A shift that starts now may make someone eligible for a waiting case.
    await wake_routing(session, ctx)
    return shift_read(shift, consultant.name)


async def list_shifts(
    session: AsyncSession,
    *,
    starts: datetime | None,
    ends: datetime | None,
    specialty: Specialty | None,
) -> list[ShiftRead]:
    shifts = await rota_repo.list_shifts(
        session,
        overlapping_from=wall_clock_to_utc(starts, field="from") if starts else None,
        overlapping_to=wall_clock_to_utc(ends, field="to") if ends else None,
        specialty=str(specialty) if specialty else None,
    )
    names = await rota_repo.consultants_by_id(session, [s.consultant_id for s in shifts])
    return [
        shift_read(s, names[s.consultant_id].name if s.consultant_id in names else "")
        for s in shifts
    ]


async def delete_shift(session: AsyncSession, *, shift_id: str) -> None:
    shift = await rota_repo.get_shift(session, shift_id)
    if shift is None:
        raise NotFound("no such shift")
    await session.delete(shift)
    await session.flush()


async def on_call(
    session: AsyncSession, *, ctx: RouterContext, specialty: Specialty, at: datetime | None
) -> OnCallRead:
    moment = wall_clock_to_utc(at, field="at") if at else ctx.clock.now()
    rows = await rota_repo.shifts_on_at(session, specialties=[str(specialty)], at=moment)
    seen_since = ctx.clock.now() - timedelta(seconds=ctx.settings.presence_stale_seconds)
    connected = await rota_repo.connected_consultants(
        session, seen_since=seen_since, among=[c.id for _, c in rows]
    )
    counts = await rota_repo.active_consult_counts(session, [c.id for _, c in rows])
    entries = [
        OnCallEntry(
            consultant=consultant_read(
                consultant,
                connected=consultant.id in connected,
                active_consults=counts[consultant.id],
            ),
            shift=shift_read(shift, consultant.name),
        )
        for shift, consultant in rows
    ]
    return OnCallRead(
        specialty=specialty,
        at=moment,
        at_local=london(moment),
        on_call=entries,
        fallback=FALLBACK_SPECIALTY,
    )
