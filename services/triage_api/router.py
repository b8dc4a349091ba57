"""The paramedic API over HTTP: thin handlers over `service` and `lifecycle`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status

from services.shared.db.session import (
    SessionDep,
    TransactionalRoute,
    unit_of_work,
)
from services.shared.errors import error_responses
from services.triage_api import lifecycle, service
from services.triage_api.deps import CaseIntake, CaseReader, ContextDep, CurrentCrew
from services.triage_api.schemas import (
    IDEMPOTENCY_KEY_PATTERN,
    AcknowledgeRequest,
    CancelRequest,
    CaseCreate,
    CaseEventPage,
    CasePage,
    CaseRead,
    ObservationSet,
)
from services.triage_api.views import case_read, event_read

# Sequence numbers are 64-bit in the database; a larger `after` is no sequence at all.
MAX_SEQ = 2**63 - 1

router = APIRouter(prefix="/v1/cases", tags=["cases"], route_class=TransactionalRoute)

IdempotencyKey = Annotated[
    str,
    Header(
        alias="Idempotency-Key",
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="8 to 128 printable characters, unique per request the crew means once.",
    ),
]
CaseId = Annotated[str, "the case's id"]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(400, 401, 403, 409, 413, 415, 422),
)
async def submit_case(
    payload: CaseCreate,
    idempotency_key: IdempotencyKey,
    intake: CaseIntake,
    crew: CurrentCrew,
    response: Response,
) -> CaseRead:
    """Ask for a consultant's advice on a patient. NEWS2, derived risk flags and priority
    are computed here. A retry with the same `Idempotency-Key` and body returns the same
    case with `Idempotent-Replayed: true`; the same key with another body is 409."""
    new = service.prepare_case(
        intake.ctx, payload=payload, idempotency_key=idempotency_key, actor=crew
    )
    if await intake.batches.submit(new):
        return case_read(new.case())
    # Not taken by the batch (a key seen before, a reference drawn twice): alone, the
    # ordinary way, which replays, redraws or says what is wrong. Only this path opens a
    # session; the batch's own transaction did the rest.
    async with unit_of_work(intake.sessionmaker) as session:
        case, replayed = await service.create_case(session, ctx=intake.ctx, new=new)
    if replayed:
        response.status_code = status.HTTP_200_OK
        response.headers["Idempotent-Replayed"] = "true"
    return case_read(case)


@router.get("", responses=error_responses(400, 401, 403))
async def list_cases(
    session: SessionDep,
    ctx: ContextDep,
    reader: CaseReader,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> CasePage:
    """The caller's cases, newest first (a coordinator sees every case). Pass the
    `next_cursor` of one page as `cursor` to get the next."""
    limit = min(limit, ctx.settings.cases_page_size_max)
    cases, next_cursor = await service.list_cases(
        session, ctx=ctx, actor=reader, cursor=cursor, limit=limit
    )
    return CasePage(items=[case_read(case) for case in cases], next_cursor=next_cursor)


@router.get("/{case_id}", responses=error_responses(401, 403, 404))
async def get_case(
    case_id: CaseId, session: SessionDep, ctx: ContextDep, reader: CaseReader
) -> CaseRead:
    """One case, with its consultant and advice once there are some. Every read is
    recorded in the audit trail."""
    case = await service.read_case(session, ctx=ctx, case_id=case_id, actor=reader, via="api")
    return case_read(case)


@router.get("/{case_id}/events", responses=error_responses(401, 403, 404, 422))
async def list_case_events(
    case_id: CaseId,
    session: SessionDep,
    ctx: ContextDep,
    reader: CaseReader,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 200,
) -> CaseEventPage:
    """The case's status events after `after`, in order: the polling twin of the stream."""
    events, last_seq = await service.case_events(
        session, ctx=ctx, case_id=case_id, actor=reader, after=after, limit=limit
    )
    return CaseEventPage(items=[event_read(event) for event in events], last_seq=last_seq)


@router.post("/{case_id}/observations", responses=error_responses(401, 403, 404, 409, 422))
async def add_observations(
    case_id: CaseId,
    payload: ObservationSet,
    session: SessionDep,
    ctx: ContextDep,
    crew: CurrentCrew,
) -> CaseRead:
    """A repeat observation set: NEWS2, risk flags and priority are recomputed and the
    router re-prioritises the case."""
    case = await lifecycle.add_observations(
        session, ctx=ctx, case_id=case_id, payload=payload, actor=crew
    )
    return case_read(case)


@router.post("/{case_id}/cancel", responses=error_responses(401, 403, 404, 409, 422))
async def cancel_case(
    case_id: CaseId,
    payload: CancelRequest,
    session: SessionDep,
    ctx: ContextDep,
    crew: CurrentCrew,
) -> CaseRead:
    """Withdraw the request (before advice). Every outstanding offer is withdrawn."""
    case = await lifecycle.cancel_case(
        session, ctx=ctx, case_id=case_id, payload=payload, actor=crew
    )
    return case_read(case)


@router.post("/{case_id}/acknowledge", responses=error_responses(401, 403, 404, 409, 422))
async def acknowledge_case(
    case_id: CaseId,
    payload: AcknowledgeRequest,
    session: SessionDep,
    ctx: ContextDep,
    crew: CurrentCrew,
) -> CaseRead:
    """Confirm the advice was received and say whether it was followed (a reason is
    required when it was not). The case closes."""
    case = await lifecycle.acknowledge_case(
        session, ctx=ctx, case_id=case_id, payload=payload, actor=crew
    )
    return case_read(case)
