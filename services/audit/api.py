"""audit over HTTP: the trail, its verification, the redirection report. Coordinators
and admins only; every query of the trail is itself an entry in it."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import AwareDatetime

from services.audit import reports, trail, verification
from services.audit.context import AuditContext, get_context
from services.audit.reports import GroupBy
from services.audit.schemas import ActorRead, EntryRead, TrailPage, VerifyRead
from services.shared.auth import Principal, require_roles
from services.shared.db.models import AuditEntry
from services.shared.db.session import SessionDep, TransactionalRoute
from services.shared.domain.vocabulary import Role
from services.shared.errors import BadRequest, error_responses
from services.shared.ids import new_event_id

# Sequence numbers are 64-bit in the database; a larger `after` is no sequence at all.
MAX_SEQ = 2**63 - 1

router = APIRouter(tags=["audit"], route_class=TransactionalRoute)

Auditor = Annotated[Principal, Depends(require_roles(Role.COORDINATOR, Role.ADMIN))]
ContextDep = Annotated[AuditContext, Depends(get_context)]
SubjectId = Annotated[str | None, Query(min_length=1, max_length=64, pattern=r"^[\w.-]+$")]
EventTypeFilter = Annotated[
    str | None, Query(alias="type", max_length=64, pattern=r"^[a-z_]+(\.[a-z_]+)+$")
]


def _entry_read(entry: AuditEntry) -> EntryRead:
    return EntryRead(
        seq=entry.seq,
        event_id=entry.event_id,
        type=entry.event_type,
        source=entry.source,
        subject_id=entry.subject_id,
        actor=ActorRead(sub=entry.actor_sub, role=entry.actor_role),
        occurred_at=entry.occurred_at,
        recorded_at=entry.recorded_at,
        details=entry.details,
        hash=entry.hash,
    )


@router.get("/v1/audit/events", responses=error_responses(401, 403, 422))
async def list_events(
    session: SessionDep,
    ctx: ContextDep,
    auditor: Auditor,
    subject_id: SubjectId = None,
    event_type: EventTypeFilter = None,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> TrailPage:
    """The trail in order: every state change and every read of a case — who, what,
    when — filtered by case (`subject_id`) or event type; page with `after`."""
    found = await trail.entries(
        session, subject_id=subject_id, event_type=event_type, after=after, limit=limit
    )
    now = ctx.clock.now()
    # Who looked at the trail, and for what, is part of the trail.
    await trail.append(
        session,
        trail.NewEntry(
            event_id=new_event_id(),
            event_type="audit.queried",
            source="audit",
            subject_id=subject_id or "*",
            actor_sub=auditor.sub,
            actor_role=str(auditor.role),
            occurred_at=now,
            details={"type": event_type} if event_type else {},
        ),
        recorded_at=now,
    )
    return TrailPage(
        events=[_entry_read(entry) for entry in found],
        next_after=found[-1].seq if len(found) == limit else None,
    )


@router.get("/v1/audit/verify", responses=error_responses(401, 403, 422))
async def verify(
    request: Request,
    ctx: ContextDep,
    _auditor: Auditor,
    full: bool = False,
) -> VerifyRead:
    """Recompute the hash chain and name the first entry that does not fit. Incremental
    from the last checkpoint unless `full=true`."""
    verdict = await verification.verify(
        request.app.state.resources.sessionmaker, now=ctx.clock.now(), full=full
    )
    ctx.record_verdict(verdict, at=ctx.clock.now())
    return VerifyRead(
        ok=verdict.ok,
        events=verdict.events,
        head=verdict.head,
        first_bad_seq=verdict.first_bad_seq,
        checked_from=verdict.checked_from,
        checked=verdict.checked,
    )


@router.get(
    "/v1/reports/redirection",
    responses={
        **error_responses(400, 401, 403, 422),
        200: {"content": {"application/json": {}, "text/csv": {}}},
    },
)
async def redirection_report(
    request: Request,
    session: SessionDep,
    ctx: ContextDep,
    _auditor: Auditor,
    start: Annotated[AwareDatetime | None, Query(alias="from")] = None,
    end: Annotated[AwareDatetime | None, Query(alias="to")] = None,
    group_by: GroupBy = GroupBy.DAY,
    format: Annotated[str | None, Query(pattern="^(json|csv)$")] = None,
) -> Response:
    """Cases created in [from, to) by group: outcomes, redirection rate, times to accept
    and to advice (medians and 90th centiles). JSON, or CSV with `format=csv` or
    `Accept: text/csv`. Default window: the last seven days."""
    end = end or ctx.clock.now()
    try:
        start = start or end - timedelta(days=7)
    except OverflowError:  # a `to` in the first week of year 1
        raise BadRequest("'to' is out of range", code="bad_window") from None
    _check_window(start, end, max_days=ctx.settings.report_max_days)
    outcomes = await reports.outcomes_between(session, start, end)
    report = reports.build(outcomes, group_by=group_by, start=start, end=end)
    wants_csv = format == "csv" or (
        format is None and "text/csv" in request.headers.get("accept", "")
    )
    if wants_csv:
        return Response(reports.to_csv(report), media_type="text/csv; charset=utf-8")
    return JSONResponse(_jsonable(report))


def _check_window(start: datetime, end: datetime, *, max_days: int) -> None:
    if start >= end:
        raise BadRequest("'from' must be before 'to'", code="bad_window")
    if end - start > timedelta(days=max_days):
        raise BadRequest(f"a report covers at most {max_days} days", code="window_too_long")


def _jsonable(report: dict[str, Any]) -> dict[str, Any]:
    return {**report, "from": report["from"].isoformat(), "to": report["to"].isoformat()}
