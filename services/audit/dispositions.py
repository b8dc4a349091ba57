"""One record per case outcome, assembled from the events of both services in whatever
order they arrive: each event fills in the facts it knows and leaves the rest alone."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict
from sqlalchemy import bindparam, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.shared.db.base import table_of
from services.shared.db.models import AuditDisposition
from services.shared.db.statements import dialect_name, insert_many_if_absent, insert_or_lock
from services.shared.schemas.events import Event, EventType

_CASE_EVENTS = frozenset(
    {
        EventType.CASE_SUBMITTED,
        EventType.CASE_UPDATED,
        EventType.CASE_CANCELLED,
        EventType.CASE_ACKNOWLEDGED,
    }
)
_CONSULT_EVENTS = frozenset(
    {EventType.CONSULT_ACCEPTED, EventType.CONSULT_ADVISED, EventType.CONSULT_ESCALATED}
)
RELEVANT = _CASE_EVENTS | _CONSULT_EVENTS


class _Facts(BaseModel):
    """What an event may say about a case's outcome (unknown keys are ignored)."""

    model_config = ConfigDict(extra="ignore")

    reference: str | None = None
    case_reference: str | None = None
    specialty: str | None = None
    call_category: str | None = None
    created_at: AwareDatetime | None = None
    case_created_at: AwareDatetime | None = None
    accepted_at: AwareDatetime | None = None
    at: AwareDatetime | None = None
    disposition: str | None = None
    pathway: str | None = None
    risk_override: bool = False
    followed: bool | None = None
    consultant: dict[str, Any] | None = None


_TABLE = table_of(AuditDisposition)
_KEY = "record_case_id"
_FIELDS = tuple(column.name for column in _TABLE.c if column.name != "case_id")
# Every field set from each row's values: one statement for the whole batch.
_WRITE_BACK = update(_TABLE).where(_TABLE.c.case_id == bindparam(_KEY))


async def record(session: AsyncSession, event: Event, *, now: datetime) -> None:
    await record_many(session, [event], now=now)


async def record_many(session: AsyncSession, events: list[Event], *, now: datetime) -> None:
    """Fill in the outcome records of a batch of events, in their order.

    A case submitted in this batch most likely has no record yet: its record is written
    whole, with every fact the batch knows, in one insert of all such records that skips
    any already made (its events may have come out of order). Every other record is made
    blank if missing, locked and read in one statement (in case order), filled in, and
    written back in one more. A new case's record is then one row written once, where it
    was written and then rewritten (two row versions, and each of the record's indexes
    updated twice).

    The caller must hold the chain head's lock (the trail's append takes it, and every
    handler appends first): batches that record outcomes then run one at a time. Without
    it, two batches could each make one case's record whole and then wait to lock the
    other's, a deadlock the case order of each statement alone does not prevent.

    The records are found through the primary key's index by the insert's conflicts. A
    read by `case_id IN (...)` did the same in the plan PostgreSQL keeps for a statement
    after its fifth run: made while the table was small, that plan scans the whole table,
    and kept until the table is next analysed, it took 8-20 ms a batch at a few
    thousand records, and grew with them.

    As Core on the table (see `table_of`): the records are read, filled in and written
    back as plain rows, at about half the CPU of the ORM's objects and flush."""
    by_case: dict[str, list[Event]] = {}
    for event in events:
        if event.type in RELEVANT:
            by_case.setdefault(event.subject_id, []).append(event)
    if not by_case:
        return
    made = await _make_whole(session, by_case, now=now)
    rest = sorted(set(by_case) - made)
    if not rest:
        return
    locking = insert_or_lock(dialect_name(session), _TABLE, "updated_at")
    locked = await session.execute(
        locking,
        [{"case_id": case_id, "risk_override": False, "updated_at": now} for case_id in rest],
    )
    rows = {row["case_id"]: dict(row) for row in locked.mappings()}
    for case_id, row in rows.items():
        _apply_all(row, by_case[case_id], now=now)
    await session.execute(
        _WRITE_BACK,
        [{_KEY: case_id, **{name: row[name] for name in _FIELDS}} for case_id, row in rows.items()],
    )


async def _make_whole(
    session: AsyncSession, by_case: dict[str, list[Event]], *, now: datetime
) -> set[str]:
    """Insert, whole, the records of the cases submitted in this batch that have none;
    the case ids of those made."""
    submitted = sorted(
        case_id
        for case_id, case_events in by_case.items()
        if any(event.type == EventType.CASE_SUBMITTED for event in case_events)
    )
    records = []
    for case_id in submitted:
        record = _blank(case_id, now=now)
        _apply_all(record, by_case[case_id], now=now)
        records.append(record)
    made: set[str] = await insert_many_if_absent(
        session, AuditDisposition, records, returning="case_id"
    )
    return made


def _blank(case_id: str, *, now: datetime) -> dict[str, Any]:
    """A record that knows nothing yet, as the locking insert makes one."""
    return {"case_id": case_id, **dict.fromkeys(_FIELDS), "risk_override": False, "updated_at": now}


def _apply_all(row: dict[str, Any], events: list[Event], *, now: datetime) -> None:
    for event in events:
        _apply(row, event, now=now)


def _apply(row: dict[str, Any], event: Event, *, now: datetime) -> None:
    facts = _Facts.model_validate(event.data)
    _fill(row, "reference", facts.reference or facts.case_reference)
    _fill(row, "specialty", facts.specialty)
    _fill(row, "call_category", facts.call_category)
    _fill(row, "created_at", facts.created_at or facts.case_created_at)
    if event.type == EventType.CASE_CANCELLED:
        _fill(row, "cancelled_at", event.occurred_at)
    if event.type == EventType.CASE_ACKNOWLEDGED and facts.followed is not None:
        row["followed"] = facts.followed
    if event.type in (EventType.CONSULT_ACCEPTED, EventType.CONSULT_ADVISED):
        _fill(row, "accepted_at", facts.accepted_at or facts.at)
        if facts.consultant:
            _fill(row, "consultant_id", facts.consultant.get("id"))
    if event.type == EventType.CONSULT_ADVISED:
        _fill(row, "advised_at", facts.at or event.occurred_at)
        _fill(row, "disposition", facts.disposition)
        _fill(row, "pathway", facts.pathway)
        row["risk_override"] = row["risk_override"] or facts.risk_override
    if row["created_at"] is not None:
        if row["accepted_at"] is not None:
            row["accept_seconds"] = (row["accepted_at"] - row["created_at"]).total_seconds()
        if row["advised_at"] is not None:
            row["advice_seconds"] = (row["advised_at"] - row["created_at"]).total_seconds()
    row["updated_at"] = now


def _fill(row: dict[str, Any], field: str, value: Any) -> None:
    """Facts do not change once known: the first event to tell one sets it."""
    if value is not None and row[field] is None:
        row[field] = value
