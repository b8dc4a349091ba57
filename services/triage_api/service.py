"""triage_api's rules: submitting, reading and following a case.

Service functions flush and never commit; the request (or unit of work) commits once.
Every change locks the case row, appends to the crew's stream and writes outbox events in
the same transaction; every read writes a `case.viewed` event for the audit trail.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.shared.auth import Principal
from services.shared.db.base import read_only_row
from services.shared.db.models import TriageCase, TriageCaseEvent
from services.shared.db.session import after_commit
from services.shared.db.statements import dialect_name
from services.shared.domain.news2 import (
    News2Result,
    Observations,
    derived_risk_flags,
    is_validated_population,
    score_news2,
)
from services.shared.domain.priority import case_priority
from services.shared.domain.reference import new_case_reference
from services.shared.domain.vocabulary import (
    CallCategory,
    CaseEventType,
    CaseStatus,
    PresentingComplaint,
    RiskFlag,
    Role,
)
from services.shared.errors import BadRequest, Conflict, NotFound, Unprocessable
from services.shared.ids import new_id
from services.shared.schemas.cases import News2Read
from services.shared.schemas.events import EventType
from services.shared.storable_text import is_storable
from services.triage_api import repository
from services.triage_api.context import TriageContext
from services.triage_api.outbound import audit_reads, change_events
from services.triage_api.schemas import CaseCreate, ObservationSet

logger = logging.getLogger("reach.triage")

_REFERENCE_ATTEMPTS = 8
_SEES_EVERY_CASE = frozenset({Role.COORDINATOR, Role.ADMIN})


@dataclass(frozen=True)
class Assessment:
    """What the server concludes from an observation set."""

    news2: News2Result | None
    risk_flags: list[RiskFlag]
    priority: int


def assess(
    observations: ObservationSet | None,
    *,
    reported_flags: Iterable[RiskFlag],
    age_years: int | None,
    complaint: PresentingComplaint,
    call_category: CallCategory,
) -> Assessment:
    obs = _domain_observations(observations)
    validated = is_validated_population(
        age_years=age_years, pregnant=complaint == PresentingComplaint.PREGNANCY
    )
    news2 = score_news2(obs, validated=validated)
    flags = sorted(set(reported_flags) | derived_risk_flags(obs))
    priority = case_priority(news2=news2, call_category=call_category, risk_flags=flags)
    return Assessment(news2=news2, risk_flags=flags, priority=priority)


def _domain_observations(observations: ObservationSet | None) -> Observations:
    if observations is None:
        return Observations()
    return Observations(
        respiration_rate=observations.respiration_rate,
        spo2=observations.spo2,
        spo2_scale=observations.spo2_scale,
        on_oxygen=observations.on_oxygen,
        systolic_bp=observations.systolic_bp,
        pulse=observations.pulse,
        consciousness=observations.consciousness,
        temperature=observations.temperature,
    )


def fingerprint(payload: CaseCreate) -> str:
    canonical = json.dumps(payload.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_taken_at(observations: ObservationSet | None, ctx: TriageContext) -> None:
    if observations is None or observations.taken_at is None:
        return
    tolerance = timedelta(seconds=ctx.settings.observation_future_tolerance_seconds)
    if observations.taken_at > ctx.clock.now() + tolerance:
        raise Unprocessable(
            "observations cannot be taken in the future",
            extra={"fields": [{"path": "observations.taken_at", "message": "is in the future"}]},
        )


def news2_document(news2: News2Result | None) -> dict[str, Any] | None:
    return None if news2 is None else News2Read.of(news2).model_dump(mode="json")


@dataclass
class NewCase:
    """A submission worked out before the first statement: its case row and the rest."""

    payload: CaseCreate
    actor: Principal
    key: str
    digest: str
    assessment: Assessment
    now: datetime
    values: dict[str, Any]
    _case: TriageCase | None = field(default=None, init=False, repr=False)

    def redraw(self) -> None:
        """A fresh id and reference, when the ones drawn were taken."""
        self.values = _new_case(
            self.payload,
            self.assessment,
            actor=self.actor,
            key=self.key,
            digest=self.digest,
            now=self.now,
        )
        self._case = None

    def case(self) -> TriageCase:
        """The case as stored (not attached to a session), built once: the outbox events
        and the response are both made from it."""
        if self._case is None:
            self._case = read_only_row(TriageCase, self.values)
        return self._case


def prepare_case(
    ctx: TriageContext, *, payload: CaseCreate, idempotency_key: str, actor: Principal
) -> NewCase:
    """Everything a new case needs that takes no database: checks, NEWS2, its row."""
    digest = fingerprint(payload)
    check_taken_at(payload.observations, ctx)
    assessment = assess(
        payload.observations,
        reported_flags=payload.risk_flags,
        age_years=payload.patient.age_years,
        complaint=payload.presenting_complaint,
        call_category=payload.incident.call_category,
    )
    now = ctx.clock.now()
    values = _new_case(
        payload, assessment, actor=actor, key=idempotency_key, digest=digest, now=now
    )
    return NewCase(payload, actor, idempotency_key, digest, assessment, now, values)


async def create_case(
    session: AsyncSession, *, ctx: TriageContext, new: NewCase
) -> tuple[TriageCase, bool]:
    """Store a new case, or replay the one this key already made. Returns (case, replayed).

    The case is inserted with `ON CONFLICT DO NOTHING`: on the usual path that is one
    round trip, and concurrent requests with one key serialise on the (paramedic, key)
    unique constraint — one inserts, the others find its case and replay it.
    """
    for attempt in range(_REFERENCE_ATTEMPTS):
        if attempt:
            new.redraw()  # not this key: the reference was taken
        if await repository.insert_case_if_new(session, new.values):
            break
        existing = await repository.find_by_idempotency_key(
            session, paramedic_id=new.actor.sub, key=new.key
        )
        if existing is not None:
            return _replay(existing, new.digest), True
    else:
        raise Conflict("could not allocate a case reference; retry", code="try_again")
    await _store_the_rest(session, ctx, [new])
    return new.case(), False


async def create_cases_together(
    session: AsyncSession, batch: Sequence[NewCase], *, ctx: TriageContext
) -> list[bool]:
    """Store a batch of new cases in one transaction (see `GroupCommit`). A case whose key
    or reference is taken is not stored (False): its request goes the way of
    `create_case`, which replays or draws again.

    On PostgreSQL every row is written at the commit, the cases with the rest, in one
    statement that the session (`written_at_commit`) sends as a transaction by itself. A
    key or reference taken then fails the whole statement, and the batch is written again
    by `create_cases_keys_apart`. SQLite's batch is that from the start.

    Nothing else a crew sends can fail the statement, and with it the other crews'
    cases: every value was bounded by `CaseCreate` to what its column holds, and text the
    database cannot store (a NUL, a lone surrogate) was refused before the request got
    here (`StorableTextRoute`), as was a token whose subject or name holds it."""
    if dialect_name(session) != "postgresql":
        return await create_cases_keys_apart(session, batch, ctx=ctx)
    await repository.insert_cases_at_commit(session, _in_idempotency_order(batch))
    await _store_the_rest(session, ctx, list(batch))
    return [True] * len(batch)


async def create_cases_keys_apart(
    session: AsyncSession, batch: Sequence[NewCase], *, ctx: TriageContext
) -> list[bool]:
    """`create_cases_together`, the cases inserted first, one statement for all, each one
    whose key and reference are free; the rest for those alone."""
    stored_ids = await repository.insert_cases_if_new(session, _in_idempotency_order(batch))
    stored = [new.values["id"] in stored_ids for new in batch]
    await _store_the_rest(session, ctx, [new for new, ok in zip(batch, stored, strict=True) if ok])
    return stored


def _in_idempotency_order(batch: Sequence[NewCase]) -> list[dict[str, Any]]:
    """The batch's case rows in the order of their idempotency keys: two batches written
    at once (PostgreSQL) that share keys then wait for each other in one order, never in
    a deadlock."""
    return sorted((new.values for new in batch), key=_idempotency_order)


def _idempotency_order(values: dict[str, Any]) -> tuple[str, str]:
    return values["paramedic_id"], values["idempotency_key"]


async def _store_the_rest(session: AsyncSession, ctx: TriageContext, news: list[NewCase]) -> None:
    """Each new case's first observation set, the first event of its stream, the news
    for the router and audit, and once committed, its metric and its log line."""
    if not news:
        return
    cases = [new.case() for new in news]
    observations = [_observation_row(new) for new in news]
    await repository.insert_first_rows(
        session,
        observations=[row for row in observations if row is not None],
        events=[
            {
                "case_id": case.id,
                "seq": 1,
                "type": CaseEventType.QUEUED,
                "at": case.created_at,
                "data": {"status": case.status, "priority": case.priority, "news2": case.news2},
            }
            for case in cases
        ],
    )
    # No stream wake-up: nobody can follow a case before its id has been returned.
    await ctx.outbox.enqueue_documents(
        session,
        [
            item
            for case, new in zip(cases, news, strict=True)
            for item in change_events(
                ctx, case, event_type=EventType.CASE_SUBMITTED, actor=new.actor
            )
        ],
    )
    for case in cases:
        after_commit(session, partial(_submitted, ctx, case))


def _submitted(ctx: TriageContext, case: TriageCase) -> None:
    specialty, category = case.requested_specialty, case.call_category
    ctx.metrics.cases_submitted.labels(specialty, category).inc()
    # Operational logs carry ids and vocabulary values, never the patient's details.
    logger.info(
        "case %s submitted: %s, priority %d, for %s", case.id, category, case.priority, specialty
    )


def _replay(case: TriageCase, digest: str) -> TriageCase:
    if case.request_fingerprint != digest:
        raise Conflict(
            "this Idempotency-Key was used for a different request",
            code="idempotency_key_reused",
        )
    return case


def _new_case(
    payload: CaseCreate,
    assessment: Assessment,
    *,
    actor: Principal,
    key: str,
    digest: str,
    now: datetime,
) -> dict[str, Any]:
    """The new case's row: the first event of its stream (seq 1, queued) is counted in."""
    location = payload.incident.location
    observations = payload.observations
    return {
        "id": new_id(),
        "reference": new_case_reference(),
        "paramedic_id": actor.sub,
        "paramedic_name": actor.name,
        "idempotency_key": key,
        "request_fingerprint": digest,
        "status": CaseStatus.QUEUED,
        "priority": assessment.priority,
        "call_category": payload.incident.call_category,
        "cad_reference": payload.incident.cad_reference,
        "callsign": payload.incident.callsign,
        "location_lat": location.lat if location else None,
        "location_lon": location.lon if location else None,
        "age_years": payload.patient.age_years,
        "sex": payload.patient.sex,
        "nhs_number": payload.patient.nhs_number,
        "presenting_complaint": payload.presenting_complaint,
        "requested_specialty": payload.requested_specialty,
        "handover_format": payload.handover.format if payload.handover else None,
        "handover_text": payload.handover.text if payload.handover else None,
        "proposed_disposition": payload.proposed_disposition,
        "reported_risk_flags": [str(flag) for flag in payload.risk_flags],
        "risk_flags": [str(flag) for flag in assessment.risk_flags],
        "observations": observations.model_dump(mode="json") if observations else None,
        "news2": news2_document(assessment.news2),
        "created_at": now,
        "updated_at": now,
        "version": 1,
        "router_version": 0,
        "event_seq": 1,
        "assigned_consultant_id": None,
        "assigned_consultant_name": None,
        "advice": None,
        "cancel_reason": None,
        "advice_followed": None,
        "not_followed_reason": None,
    }


def _observation_row(new: NewCase) -> dict[str, Any] | None:
    """The case's first observation set: the same documents as the case row's."""
    if new.payload.observations is None:
        return None
    return {
        "case_id": new.values["id"],
        "recorded_at": new.now,
        "recorded_by": new.actor.sub,
        "values": new.values["observations"],
        "news2": new.values["news2"],
    }


def can_see(actor: Principal, case: TriageCase) -> bool:
    return actor.role in _SEES_EVERY_CASE or case.paramedic_id == actor.sub


async def visible_case(
    session: AsyncSession, *, case_id: str, actor: Principal, for_update: bool = False
) -> TriageCase:
    """The case if the caller may see it; 404 otherwise, never confirming it exists."""
    case = await repository.get_case(session, case_id, for_update=for_update)
    if case is None or not can_see(actor, case):
        raise NotFound("no such case")
    return case


async def read_case(
    session: AsyncSession, *, ctx: TriageContext, case_id: str, actor: Principal, via: str
) -> TriageCase:
    case = await visible_case(session, case_id=case_id, actor=actor)
    await audit_reads(session, ctx, [case], actor=actor, via=via)
    return case


async def list_cases(
    session: AsyncSession,
    *,
    ctx: TriageContext,
    actor: Principal,
    cursor: str | None,
    limit: int,
) -> tuple[list[TriageCase], str | None]:
    """The caller's cases (every case for coordinators), newest first."""
    before = decode_cursor(cursor) if cursor else None
    only_mine = None if actor.role in _SEES_EVERY_CASE else actor.sub
    cases = await repository.list_cases(
        session, paramedic_id=only_mine, before=before, limit=limit + 1
    )
    page, more = cases[:limit], len(cases) > limit
    await audit_reads(session, ctx, page, actor=actor, via="list")
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if more and page else None
    return page, next_cursor


def encode_cursor(created_at: datetime, case_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), case_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, case_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        moment = datetime.fromisoformat(created_at)
        # A cursor is the client's text once decoded: an id holding a NUL was not ours.
        if moment.tzinfo is None or not isinstance(case_id, str) or not is_storable(case_id):
            raise ValueError
    except (ValueError, TypeError, json.JSONDecodeError):
        raise BadRequest("the cursor is not one this server gave out", code="bad_cursor") from None
    return moment, case_id


async def case_events(
    session: AsyncSession,
    *,
    ctx: TriageContext,
    case_id: str,
    actor: Principal,
    after: int,
    limit: int,
) -> tuple[list[TriageCaseEvent], int]:
    """The crew's stream after `after`, and the newest seq there is."""
    case = await read_case(session, ctx=ctx, case_id=case_id, actor=actor, via="events")
    events = await repository.events_after(session, case.id, after=after, limit=limit)
    return events, case.event_seq
