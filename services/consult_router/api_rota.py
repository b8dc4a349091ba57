"""The rota over HTTP: consultants, shifts, who is on call."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from services.consult_router import rota
from services.consult_router.deps import ContextDep, RotaAdmin, RotaReader
from services.consult_router.schemas import (
    ConsultantRead,
    ConsultantUpsert,
    OnCallRead,
    ShiftCreate,
    ShiftRead,
)
from services.shared.db.session import SessionDep, TransactionalRoute
from services.shared.domain.vocabulary import Specialty
from services.shared.errors import error_responses

router = APIRouter(tags=["rota"], route_class=TransactionalRoute)

ConsultantId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._@-]+$")]


@router.put("/v1/consultants/{consultant_id}", responses=error_responses(401, 403, 422))
async def put_consultant(
    consultant_id: ConsultantId,
    payload: ConsultantUpsert,
    session: SessionDep,
    ctx: ContextDep,
    _admin: RotaAdmin,
) -> ConsultantRead:
    """Add a consultant to the rota, or change their name, grade and specialties. The id
    is the `sub` of the consultant's token."""
    return await rota.upsert_consultant(
        session, ctx=ctx, consultant_id=consultant_id, payload=payload
    )


@router.get("/v1/consultants", responses=error_responses(401, 403))
async def list_consultants(
    session: SessionDep, ctx: ContextDep, _reader: RotaReader
) -> list[ConsultantRead]:
    """Every consultant on the rota, with their status, presence and current load."""
    return await rota.list_consultants(session, ctx=ctx)


@router.post(
    "/v1/shifts", status_code=status.HTTP_201_CREATED, responses=error_responses(401, 403, 422)
)
async def create_shift(
    payload: ShiftCreate, session: SessionDep, ctx: ContextDep, _admin: RotaAdmin
) -> ShiftRead:
    """Put a consultant on call for a specialty. Times without an offset are Europe/London
    wall-clock times; they are stored in UTC and shown in both."""
    return await rota.create_shift(session, ctx=ctx, payload=payload)


@router.get("/v1/shifts", responses=error_responses(401, 403, 422))
async def list_shifts(
    session: SessionDep,
    _reader: RotaReader,
    starts: Annotated[datetime | None, Query(alias="from")] = None,
    ends: Annotated[datetime | None, Query(alias="to")] = None,
    specialty: Specialty | None = None,
) -> list[ShiftRead]:
    """Shifts overlapping [from, to), optionally for one specialty, in start order."""
    return await rota.list_shifts(session, starts=starts, ends=ends, specialty=specialty)


@router.delete(
    "/v1/shifts/{shift_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401, 403, 404),
)
async def delete_shift(shift_id: str, session: SessionDep, _admin: RotaAdmin) -> Response:
    """Remove a shift."""
    await rota.delete_shift(session, shift_id=shift_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/v1/oncall", responses=error_responses(401, 403, 422))
async def on_call(
    session: SessionDep,
    ctx: ContextDep,
    _reader: RotaReader,
    specialty: Specialty,
    at: datetime | None = None,
) -> OnCallRead:
    """Who is on call for a specialty at a moment (now by default)."""
    return await rota.on_call(session, ctx=ctx, specialty=specialty, at=at)
