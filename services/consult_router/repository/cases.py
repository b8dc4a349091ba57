"""The router's cases, offers and consults.

The queries every case runs through are built once, here, with their values as bound
parameters: building a statement and its cache key on each call cost about 40 us, more
than a fifth of what some of them take to run (see `bench/RESULTS.md`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnClause,
    ColumnElement,
    Row,
    Select,
    String,
    bindparam,
    exists,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy import case as sql_case
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import defer
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from services.consult_router.repository import messages as message_repo
from services.shared.db.base import adopt_written_row, read_only_row, table_of
from services.shared.db.models import ConsultCase, ConsultConsult, ConsultConsultant, ConsultOffer
from services.shared.db.statements import (
    dialect_name,
    insert_ignoring_conflicts,
    insert_many_if_absent,
)
from services.shared.domain.priority import AGEING_STEPS, HIGHEST_PRIORITY

OPEN_CASE = ("queued", "offered")


def _word(value: str) -> ColumnClause[str]:
    """A word of the vocabulary written into a statement's SQL rather than sent as a
    parameter (only ever one of the constants below, never a caller's value).

    The partial indexes of open cases and open offers name these words. PostgreSQL can
    match such an index only with the value in hand, so a statement comparing with a
    parameter was planned afresh at every run: who is on call took 0.4 ms of the
    database's CPU a run to plan, four times what it took to run. With the words written
    in, the plan PostgreSQL makes after the fifth run uses the indexes, and it keeps it."""
    if not re.fullmatch(r"[a-z_]+", value):
        raise ValueError(f"not a vocabulary word: {value!r}")
    return literal_column(f"'{value}'", String())


OPEN, QUEUED, AVAILABLE = _word("open"), _word("queued"), _word("available")
_OPEN_CASE_WORDS = [_word(status) for status in OPEN_CASE]

_CASE = select(ConsultCase).where(ConsultCase.id == bindparam("case_id"))
# Every change to a case (routing, accepting, claiming, advising, cancelling) takes this
# lock first: on PostgreSQL that is what makes one accept win.
_CASE_LOCKED = _CASE.with_for_update()
_INSERT_CASE = insert(table_of(ConsultCase))
_CASES = select(ConsultCase).where(ConsultCase.id.in_(bindparam("case_ids", expanding=True)))
_CASES_LOCKED = _CASES.order_by(ConsultCase.id).with_for_update()
_IS_OPEN = ConsultCase.status.in_(_OPEN_CASE_WORDS)


def _aged_priority() -> ColumnElement[int]:
    """`aged_priority` in SQL: the case's priority raised one level for each ageing step
    it has waited (`aged_1`, `aged_2`...: when a case must have been created by to have
    waited that many steps, `ageing_bounds`), never above the highest. Bounds rather than
    date arithmetic, which SQLite and PostgreSQL spell differently."""
    steps = sql_case(
        *(
            (ConsultCase.created_at <= bindparam(f"aged_{step}"), step)
            for step in range(AGEING_STEPS, 0, -1)
        ),
        else_=0,
    )
    raised = ConsultCase.priority - steps
    return sql_case((raised < HIGHEST_PRIORITY, HIGHEST_PRIORITY), else_=raised)


# The open cases a routing pass orders: in each specialty the first `limit` in the order
# the pass routes them (`queue_order`: the priority aged by waiting, then the higher
# NEWS2, then the oldest). So a backlog beyond the limit never keeps an urgent case from
# the free, and a backlog in one specialty never keeps another's cases from theirs.
_RANKED_OPEN_CASES = (
    select(
        ConsultCase.id.label("case_id"),
        func.row_number()
        .over(
            partition_by=ConsultCase.specialty,
            order_by=(
                _aged_priority(),
                func.coalesce(ConsultCase.news2_score, 0).desc(),
                ConsultCase.created_at,
                ConsultCase.id,
            ),
        )
        .label("place"),
    )
    .where(_IS_OPEN)
    .subquery("ranked")
)
_OPEN_CASES_BY_URGENCY = (
    select(ConsultCase)
    .join(_RANKED_OPEN_CASES, _RANKED_OPEN_CASES.c.case_id == ConsultCase.id)
    .where(_RANKED_OPEN_CASES.c.place <= bindparam("limit"))
)


@dataclass(frozen=True, slots=True)
class FixedLine:
    """What an open case's queue line shows that stays as it is until a newer snapshot:
    fixed when the case opened (reference, specialty, call category, arrival, and when
    the router received it) or taken from its snapshot (`version`): the priority, and of
    the clinical document only the NEWS2 score and the risk flags."""

    case_id: str
    version: int
    reference: str
    priority: int
    specialty: str
    call_category: str
    news2: dict[str, Any] | None
    risk_flags: list[str] | None
    created_at: datetime
    received_at: datetime


@dataclass(frozen=True, slots=True)
class QueueMark:
    """What can change in an open case's queue line from one read to the next without a
    newer snapshot from the crew (the case as the router has moved it), and the case's
    fixed line when the read was asked for it (`queue_marks`)."""

    case_id: str
    # The newest snapshot applied: the line's other facts are those of this version.
    version: int
    status: str
    escalations: int
    fixed: FixedLine | None


_FIXED_COLUMNS = (
    ConsultCase.id,
    ConsultCase.version,
    ConsultCase.reference,
    ConsultCase.priority,
    ConsultCase.specialty,
    ConsultCase.call_category,
    ConsultCase.snapshot["news2"],
    ConsultCase.snapshot["risk_flags"],
    ConsultCase.created_at,
    ConsultCase.received_at,
)
# The queue is read at every change (once for all the dashboards) and for each dashboard
# that connects: each open case's marks, and a case's fixed line only where the reader
# may not keep it (`QueueLines`). Of a case's clinical document the fixed line needs the
# score and the flags alone, picked out by the database (`JSON_EXTRACT` on SQLite, `->`
# on PostgreSQL); the rest (the patient's details, observations, handover) is not read
# into the process at all, let alone decoded. Picking them out was most of the
# statement's work on SQLite (40 cases: about 400 us with them, 120 without), and
# decoding, validating and encoding them most of the process's.
_ARRIVED_SINCE = ConsultCase.received_at >= bindparam("since")
# In the order the dashboards show the queue (most urgent first, then the longest
# waiting), so that its limit takes the first cases shown: a backlog beyond it never
# hides an urgent case.
_QUEUE_MARKS = (
    select(
        ConsultCase.id,
        ConsultCase.version,
        ConsultCase.status,
        ConsultCase.escalations,
        _ARRIVED_SINCE,
        # The fixed line of a case received since `since`, in the same statement: a new
        # case costs no statement of its own. The database picks nothing out of the others.
        *(sql_case((_ARRIVED_SINCE, column)) for column in _FIXED_COLUMNS),
    )
    .where(_IS_OPEN)
    .order_by(ConsultCase.priority, ConsultCase.created_at, ConsultCase.id)
    .limit(bindparam("limit"))
)
_FIXED_LINES = select(*_FIXED_COLUMNS).where(
    ConsultCase.id.in_(bindparam("case_ids", expanding=True))
)
# Ordering and choosing cases need none of the clinical document, the largest part of the
# row to read and decode; touching it on these rows is an error, not a load.
_OPEN_CASES_UNDOCUMENTED = _OPEN_CASES_BY_URGENCY.options(
    defer(ConsultCase.snapshot, raiseload=True)
)
# The routing queue: each open case with whether someone is being asked about it now.
_QUEUE_TO_ROUTE = _OPEN_CASES_UNDOCUMENTED.add_columns(
    exists().where(ConsultOffer.case_id == ConsultCase.id, ConsultOffer.state == OPEN)
)
# Whether an open case other than the transaction's new ones (`arrivals`) could move on a
# routing pass (`RoutingView.may_move`, not sweeping, someone free): it waits for someone
# free (queued), its offers are closed, or it is broadcast. Otherwise each awaits an
# answer, and a pass routing new cases need not read the queue to pass them over.
_CASE_TABLE = table_of(ConsultCase)
ANOTHER_CASE_MAY_MOVE = exists().where(
    _CASE_TABLE.c.status.in_(_OPEN_CASE_WORDS),
    _CASE_TABLE.c.id.not_in(bindparam("arrivals", expanding=True)),
    or_(
        _CASE_TABLE.c.status == QUEUED,
        _CASE_TABLE.c.broadcast,
        ~exists().where(
            table_of(ConsultOffer).c.case_id == _CASE_TABLE.c.id,
            table_of(ConsultOffer).c.state == OPEN,
        ),
    ),
)
_OPEN_CASE_TO_ROUTE = (
    select(ConsultCase)
    .where(ConsultCase.id == bindparam("case_id"), ConsultCase.status.in_(_OPEN_CASE_WORDS))
    .with_for_update(skip_locked=True)
    .execution_options(populate_existing=True)
)
_OFFER = select(ConsultOffer).where(ConsultOffer.id == bindparam("offer_id"))
_OFFER_LOCKED = _OFFER.with_for_update()
_OPEN_OFFERS_FOR_CASE = select(ConsultOffer).where(
    ConsultOffer.case_id == bindparam("case_id"), ConsultOffer.state == OPEN
)
_OPEN_OFFERS_FOR_CONSULTANT = (
    select(ConsultOffer)
    .where(ConsultOffer.consultant_id == bindparam("consultant_id"), ConsultOffer.state == OPEN)
    .order_by(ConsultOffer.created_at)
)
_OFFER_TABLE = table_of(ConsultOffer)
_CONSULTANT_TABLE = table_of(ConsultConsultant)
# Core (see `table_of`): the caller holds the offer's object and it is brought up to
# date here, rather than by the ORM searching the session for it.
_CLOSE_OPEN_OFFER = (
    update(_OFFER_TABLE)
    .where(_OFFER_TABLE.c.id == bindparam("offer_id"), _OFFER_TABLE.c.state == OPEN)
    .values(state=bindparam("closed_as"), close_reason=bindparam("reason"),
            closed_at=bindparam("at"))
)  # fmt: skip
# Every offer of a case still open, closed at once (a cancellation, an accept): the offers
# as closed, so the look for them and the close are one statement.
_CLOSE_OPEN_OFFERS_OF_CASE = (
    update(_OFFER_TABLE)
    .where(_OFFER_TABLE.c.case_id == bindparam("of_case"), _OFFER_TABLE.c.state == OPEN)
    .values(state=bindparam("closed_as"), close_reason=bindparam("reason"),
            closed_at=bindparam("at"))
    .returning(*_OFFER_TABLE.c)
)  # fmt: skip
# What routing a case needs of its offers in one read: those still open (any round) and
# those of its current round (tried already, declined moments ago).
_OFFERS_OPEN_OR_IN_ROUND = select(ConsultOffer).where(
    ConsultOffer.case_id == bindparam("case_id"),
    (ConsultOffer.state == OPEN) | (ConsultOffer.round == bindparam("round")),
)
_CASES_OFFERED_TO_LOCKED = (
    select(ConsultCase.id)
    .where(
        ConsultCase.id.in_(
            select(ConsultOffer.case_id).where(
                ConsultOffer.consultant_id.in_(bindparam("consultant_ids", expanding=True)),
                ConsultOffer.state == OPEN,
            )
        )
    )
    .order_by(ConsultCase.id)
    .with_for_update(of=ConsultCase)
)
_CONSULT_FOR_CASE = select(ConsultConsult).where(ConsultConsult.case_id == bindparam("case_id"))
_OPEN_OFFERS_HELD = select(ConsultOffer.case_id, ConsultOffer.consultant_id).where(
    ConsultOffer.state == OPEN
)
_OPEN_OFFER_HOLDERS = _OPEN_OFFERS_HELD.where(
    ConsultOffer.case_id.in_(bindparam("case_ids", expanding=True))
)


async def get_case(
    session: AsyncSession, case_id: str, *, for_update: bool = False
) -> ConsultCase | None:
    statement = _CASE_LOCKED if for_update else _CASE
    return (await session.execute(statement, {"case_id": case_id})).scalar_one_or_none()


async def get_cases(
    session: AsyncSession, case_ids: Iterable[str], *, for_update: bool = False
) -> dict[str, ConsultCase]:
    """The cases that exist among `case_ids`, by id; locked in id order when asked, so
    two batches never wait on each other crosswise."""
    statement = _CASES_LOCKED if for_update else _CASES
    rows = await session.execute(statement, {"case_ids": sorted(case_ids)})
    return {case.id: case for case in rows.scalars()}


async def insert_cases(
    session: AsyncSession, rows: list[dict[str, object]]
) -> dict[str, ConsultCase]:
    """Write new cases in one statement (Core), each the session's own object from then
    on, by id."""
    await session.execute(_INSERT_CASE, rows)
    return {str(row["id"]): adopt_written_row(session, ConsultCase, row) for row in rows}


async def insert_cases_if_new(
    session: AsyncSession, rows: list[dict[str, object]]
) -> dict[str, ConsultCase]:
    """Write, in one statement and in the order given (callers give id order, the order
    of their locks), each case not written already (nor being written by another
    transaction, which is waited for); the cases this call wrote, each the session's own
    object from then on, by id."""
    if not rows:
        return {}
    written = await insert_many_if_absent(session, ConsultCase, rows, returning="id")
    return {
        str(row["id"]): adopt_written_row(session, ConsultCase, row)
        for row in rows
        if row["id"] in written
    }


async def queue_marks(
    db: AsyncSession | AsyncConnection, *, limit: int, since: datetime
) -> list[QueueMark]:
    """The first `limit` open cases' marks in the order the dashboards show them (most
    urgent first, then the longest waiting); with its fixed line, each case the router
    received at or after `since`."""
    rows = await db.execute(_QUEUE_MARKS, {"limit": limit, "since": since})
    return [
        QueueMark(row[0], row[1], row[2], row[3], FixedLine(*row[5:]) if row[4] else None)
        for row in rows
    ]


async def fixed_lines(db: AsyncSession | AsyncConnection, case_ids: list[str]) -> list[FixedLine]:
    """The fixed lines of those of `case_ids` that exist, each as its case is now."""
    rows = await db.execute(_FIXED_LINES, {"case_ids": case_ids})
    return [FixedLine(*row) for row in rows]


async def queue_to_route(
    session: AsyncSession, *, limit: int, aged_by: Sequence[datetime]
) -> list[tuple[ConsultCase, bool]]:
    """In each specialty, the `limit` most urgent open cases as routing orders them, their
    priority aged by `aged_by` (`ageing_bounds`), in no order; read for ordering and
    choosing (their clinical snapshot is not loaded), each with whether it has an open
    offer."""
    bounds = {f"aged_{step}": bound for step, bound in enumerate(aged_by, start=1)}
    rows = await session.execute(_QUEUE_TO_ROUTE, {"limit": limit, **bounds})
    return [(case, bool(on_offer)) for case, on_offer in rows]


async def lock_open_case(session: AsyncSession, case_id: str) -> ConsultCase | None:
    """An open case, locked for routing; None if closed or another process is on it.

    Read afresh even if this session has the case already (the routing pass read it
    before taking the lock, without its clinical snapshot): what counts is the row as it
    is once locked."""
    rows = await session.execute(_OPEN_CASE_TO_ROUTE, {"case_id": case_id})
    return rows.scalar_one_or_none()


async def due_escalations(session: AsyncSession, *, now: datetime, limit: int) -> list[ConsultCase]:
    statement = (
        select(ConsultCase)
        .where(ConsultCase.status.in_(_OPEN_CASE_WORDS), ConsultCase.escalate_at <= now)
        .order_by(ConsultCase.escalate_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list((await session.execute(statement)).scalars())


async def lock_cases_offered_to(session: AsyncSession, consultant_ids: Iterable[str]) -> None:
    """Lock the cases the consultants are being offered, in id order. Whatever changes
    both a case and a consultant takes the case first (an accept, a cancellation, an
    expiry: the case, then its offers, then each consultant for their message); letting a
    consultant go does too, so the two never wait on each other crosswise."""
    await session.execute(_CASES_OFFERED_TO_LOCKED, {"consultant_ids": sorted(set(consultant_ids))})


async def get_offer(
    session: AsyncSession, offer_id: str, *, for_update: bool = False
) -> ConsultOffer | None:
    statement = _OFFER_LOCKED if for_update else _OFFER
    return (await session.execute(statement, {"offer_id": offer_id})).scalar_one_or_none()


async def open_offers_for_case(session: AsyncSession, case_id: str) -> list[ConsultOffer]:
    return list((await session.execute(_OPEN_OFFERS_FOR_CASE, {"case_id": case_id})).scalars())


async def open_offers_for_consultant(
    session: AsyncSession, consultant_id: str
) -> list[ConsultOffer]:
    rows = await session.execute(_OPEN_OFFERS_FOR_CONSULTANT, {"consultant_id": consultant_id})
    return list(rows.scalars())


async def offers_open_or_in_round(
    session: AsyncSession, case_id: str, round_: int
) -> list[ConsultOffer]:
    """The case's open offers and its offers of round `round_`, in one statement."""
    rows = await session.execute(_OFFERS_OPEN_OR_IN_ROUND, {"case_id": case_id, "round": round_})
    return list(rows.scalars())


async def cases_with_expired_offers(
    session: AsyncSession, *, now: datetime, limit: int
) -> list[str]:
    """The cases with an open offer past its deadline, each once, the longest overdue
    first. Read without a lock: expiry takes each case's lock, then its offers', the order
    every change to an offer keeps (`expired_offers_of_case`)."""
    statement = (
        select(ConsultOffer.case_id)
        .where(ConsultOffer.state == OPEN, ConsultOffer.expires_at <= now)
        .group_by(ConsultOffer.case_id)
        .order_by(func.min(ConsultOffer.expires_at), ConsultOffer.case_id)
        .limit(limit)
    )
    return list((await session.execute(statement)).scalars())


async def expired_offers_of_case(
    session: AsyncSession, case_id: str, *, now: datetime
) -> list[ConsultOffer]:
    """The case's open offers past their deadline, oldest deadline first. Read with the
    case locked, so they stay as read: nothing closes an offer without its case's lock."""
    statement = (
        select(ConsultOffer)
        .where(
            ConsultOffer.case_id == case_id,
            ConsultOffer.state == OPEN,
            ConsultOffer.expires_at <= now,
        )
        .order_by(ConsultOffer.expires_at, ConsultOffer.id)
    )
    return list((await session.execute(statement)).scalars())


async def insert_offer_unless_held(
    session: AsyncSession, values: dict[str, object]
) -> ConsultOffer | None:
    """Write a new open offer at once (Core: no flush of the whole session to make one
    row) and return it as an object to read, or None, writing nothing, if its consultant
    is not free (not available, their row held by another transaction, or changed since
    the statement began) or holds an open offer already. One statement: the insert
    carries the checks, and locks the consultant's row if they are free, until the
    transaction ends. Routing on PostgreSQL makes its offers with their message instead
    (`insert_offer_and_message_unless_held`): the lock's check relies on every offer there
    counting one on its consultant's row, which an offer made here alone does not.

    The check of their offers reads as of the statement's start, like the read it
    replaced, so it never waits: an offer being closed by another transaction still
    counts as open. (Left to the unique index alone, the insert would wait for that
    transaction, which goes on to lock this consultant: a deadlock; so would an offer
    committed after the statement's start, which the lock refuses: `consultant_if_free`.)
    The index stays behind it all, so a second open offer to one consultant is refused
    whatever writes it."""
    statement = _offer_unless_held(dialect_name(session))
    result = await session.execute(statement, values)
    if getattr(result, "rowcount", 0) != 1:
        return None
    return read_only_row(ConsultOffer, values)


# The offer's values named apart from the consultant's and the case's columns in the
# statement that also numbers their message and moves the case: an UPDATE takes a
# parameter named after one of its table's columns (`id`, `created_at`) as a value to set.
_OFFERED = "offered_"


@dataclass(frozen=True, slots=True)
class MadeOffer:
    """An offer made: the seq of the consultant's message about it, and the router
    version its case moved to from queued with it, as the database wrote it (None: the
    case was not moved in the statement)."""

    seq: int
    moved_to_version: int | None = None


async def insert_offer_and_message_unless_held(
    session: AsyncSession,
    values: dict[str, object],
    *,
    kind: str,
    payload: dict[str, Any],
    at: datetime,
    moving_the_case: bool = False,
) -> MadeOffer | None:
    """`insert_offer_unless_held`, and if the offer is made, the message that tells its
    consultant of it appended to their log (`messages.append`); None, writing nothing, if
    they are not free or hold an open offer already. On PostgreSQL one statement, the
    offer's insert feeding the message's numbering: a round trip fewer on the path of
    every offer; and `moving_the_case`, the same statement moves the case to offered if
    it is queued (its router version counted), where the caller's object would have been
    flushed as an UPDATE of its own. The caller holds the case's row (or wrote the case in
    this transaction), and the consultant's is taken only if no one holds it, so nothing
    here waits."""
    if dialect_name(session) != "postgresql":
        if await insert_offer_unless_held(session, values) is None:
            return None
        consultant_id = str(values["consultant_id"])
        seq = await message_repo.append(session, consultant_id, type=kind, payload=payload, at=at)
        return MadeOffer(seq)
    parameters = {f"{_OFFERED}{column}": value for column, value in values.items()}
    result = await session.execute(
        _offer_and_message_unless_held(moving_the_case=moving_the_case),
        {**parameters, "for_consultant": values["consultant_id"], "kind": kind,
         "document": payload, "at": at},
    )  # fmt: skip
    row = result.one_or_none()
    if row is None:
        return None
    moved_to = row[1] if moving_the_case else None
    return MadeOffer(int(row[0]), None if moved_to is None else int(moved_to))


@functools.cache
def _offer_and_message_unless_held(*, moving_the_case: bool) -> Any:
    made = _offer_unless_held("postgresql", prefix=_OFFERED)
    made = made.returning(_OFFER_TABLE.c.consultant_id, _OFFER_TABLE.c.case_id).cte("made")
    statement = message_repo.append_numbered_for(select(made.c.consultant_id))
    if not moving_the_case:
        return statement
    # Run whether or not the statement reads it, as every data-modifying WITH is; it
    # moves the case only if the offer was made, and only from queued. What it wrote
    # comes back beside the message's seq, so the caller's object takes the database's
    # word, not its own guess.
    moved = (
        update(_CASE_TABLE)
        .where(
            _CASE_TABLE.c.id.in_(select(made.c.case_id)),
            _CASE_TABLE.c.status == QUEUED,
        )
        .values(status=_word("offered"), router_version=_CASE_TABLE.c.router_version + 1)
        .returning(_CASE_TABLE.c.router_version)
        .cte("moved")
    )
    return statement.add_cte(moved).returning(select(moved.c.router_version).scalar_subquery())


@functools.cache
def _offer_unless_held(dialect: str, *, prefix: str = "") -> Any:
    columns = [column.name for column in _OFFER_TABLE.c]
    row = select(
        *(bindparam(f"{prefix}{name}", type_=_OFFER_TABLE.c[name].type) for name in columns)
    )
    consultant_id = bindparam(f"{prefix}consultant_id", type_=_OFFER_TABLE.c.consultant_id.type)
    held = exists().where(
        _OFFER_TABLE.c.consultant_id == consultant_id, _OFFER_TABLE.c.state == OPEN
    )
    free = exists(consultant_if_free(consultant_id))
    return insert_ignoring_conflicts(dialect, _OFFER_TABLE).from_select(
        columns, row.where(~held, free)
    )


def consultant_if_free(consultant_id: BindParameter[str]) -> Select[tuple[str]]:
    """The consultant's row, locked if they are free: available, and not held by another
    transaction (skipped, never waited for: that one is changing them).

    The offer's statement reads their offers as of its start, and takes this lock later,
    on the row as it is then. An offer to them committed in between would be missed by
    that read, and the insert would meet it in the unique index, where it waits for any
    transaction closing it, which goes on to lock this consultant for their message:
    a deadlock. On PostgreSQL every offer counts a message on its consultant's row, in
    the statement that makes it, so the lock's check of the row as it is now (its status,
    and its message count as the statement's start read it) refuses one changed since:
    their offers as read are still all there are. SQLite has one writer, whose
    transaction holds the whole database: there the check is all there is."""
    consultants, as_read = _CONSULTANT_TABLE.c, _CONSULTANT_TABLE.alias("as_read").c
    # Not correlated: read once, as of the statement's start, and kept for the check.
    count_at_start = select(as_read.message_seq).where(as_read.id == consultant_id).correlate(None)
    return (
        select(consultants.id)
        .where(
            consultants.id == consultant_id,
            consultants.status == AVAILABLE,
            consultants.message_seq == count_at_start.scalar_subquery(),
        )
        .with_for_update(skip_locked=True)
    )


async def close_offer(
    session: AsyncSession, offer: ConsultOffer, *, state: str, reason: str | None, at: datetime
) -> bool:
    """Close an offer that is still open, and `offer` with it; False if it was already
    closed (and `offer` is left as it was read)."""
    result = await session.execute(
        _CLOSE_OPEN_OFFER, {"offer_id": offer.id, "closed_as": state, "reason": reason, "at": at}
    )
    if getattr(result, "rowcount", 0) != 1:
        return False
    for key, value in (("state", state), ("close_reason", reason), ("closed_at", at)):
        set_committed_value(offer, key, value)
    return True


async def close_open_offers_of_case(
    session: AsyncSession, case_id: str, *, state: str, reason: str, at: datetime
) -> list[ConsultOffer]:
    """Close every offer of the case that is still open, in one statement; the offers
    closed, oldest first: this session's own objects, brought up to date, where it holds
    them, else objects to read (an offer object routing built for its insert, or one from
    `insert_offer_unless_held`, is not the session's, and is left as it was)."""
    # Named apart from the columns, which an UPDATE takes as values to set.
    parameters = {"of_case": case_id, "closed_as": state, "reason": reason, "at": at}
    rows = (await session.execute(_CLOSE_OPEN_OFFERS_OF_CASE, parameters)).mappings().all()
    closed = []
    for row in sorted(rows, key=lambda row: (row["created_at"], row["id"])):
        held = session.identity_map.get(identity_key(ConsultOffer, row["id"]))
        if isinstance(held, ConsultOffer):
            # Every column, as a read would: one expired meanwhile is loaded, not lazily.
            for key, value in row.items():
                set_committed_value(held, key, value)
            closed.append(held)
        else:
            closed.append(read_only_row(ConsultOffer, dict(row)))
    return closed


async def get_consult(session: AsyncSession, consult_id: str) -> ConsultConsult | None:
    return await session.get(ConsultConsult, consult_id)


async def consult_for_case(session: AsyncSession, case_id: str) -> ConsultConsult | None:
    return (await session.execute(_CONSULT_FOR_CASE, {"case_id": case_id})).scalar_one_or_none()


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
    """Consults whose advice is overdue, the longest first. Read without a lock: the
    escalation takes the case's lock, then reads the consult again (a consult changes only
    under its case's lock: advice, a cancellation)."""
    statement = (
        select(ConsultConsult)
        .where(
            ConsultConsult.advice_due_at <= now,
            ConsultConsult.advised_at.is_(None),
            ConsultConsult.ended_at.is_(None),
        )
        .order_by(ConsultConsult.advice_due_at)
        .limit(limit)
    )
    return list((await session.execute(statement)).scalars())


async def open_offer_holders(
    db: AsyncSession | AsyncConnection, case_ids: Iterable[str]
) -> dict[str, list[str]]:
    wanted = list(set(case_ids))
    if not wanted:
        return {}
    return _holders_by_case(await db.execute(_OPEN_OFFER_HOLDERS, {"case_ids": wanted}))


async def every_open_offer_holder(db: AsyncSession | AsyncConnection) -> dict[str, list[str]]:
    """Who holds each open offer, by case: for the whole queue, where naming its cases
    would take a parameter each, rendered into the statement at every read (a backlog of
    500 cases: 11.1 -> 8.7 ms a read). Open offers are few (a consultant is asked about
    one case at a time), and their partial index holds just them."""
    return _holders_by_case(await db.execute(_OPEN_OFFERS_HELD))


def _holders_by_case(rows: Iterable[Row[str, str]]) -> dict[str, list[str]]:
    holders: dict[str, list[str]] = {}
    for case_id, consultant_id in rows:
        holders.setdefault(case_id, []).append(consultant_id)
    return holders


async def queue_depths(
    session: AsyncSession, *, now: datetime
) -> list[tuple[str, int, datetime | None]]:
    statement = (
        select(ConsultCase.specialty, func.count(), func.min(ConsultCase.created_at))
        .where(ConsultCase.status.in_(_OPEN_CASE_WORDS))
        .group_by(ConsultCase.specialty)
    )
    del now
    return [
        (specialty, int(count), oldest)
        for specialty, count, oldest in await session.execute(statement)
    ]
