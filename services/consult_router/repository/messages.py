"""Each consultant's numbered message log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CTE, Insert, Select, bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.shared.db.base import table_of
from services.shared.db.models import ConsultConsultant, ConsultMessage
from services.shared.db.statements import dialect_name

# Built once: every message appended and every socket catching up runs these (see
# `repository.cases` for why); the writes on the tables, as Core (see `table_of`).
_CONSULTANTS = table_of(ConsultConsultant)
_NEXT_SEQ = (
    update(_CONSULTANTS)
    .where(_CONSULTANTS.c.id == bindparam("consultant"))
    .values(message_seq=_CONSULTANTS.c.message_seq + 1)
    .returning(_CONSULTANTS.c.message_seq)
)
_MESSAGES = table_of(ConsultMessage)
_INSERT_MESSAGE = insert(_MESSAGES)


def _numbered_insert(numbered: CTE) -> Insert:
    """The message inserted with the seq the counter's bump (`numbered`) returns; none if
    it bumped no row. Its values are named apart from the consultant's columns, which the
    bump would take as values to set."""
    return (
        insert(_MESSAGES)
        .from_select(
            ["consultant_id", "seq", "type", "payload", "created_at"],
            select(
                bindparam("for_consultant", type_=_MESSAGES.c.consultant_id.type),
                numbered.c.message_seq,
                bindparam("kind", type_=_MESSAGES.c.type.type),
                bindparam("document", type_=_MESSAGES.c.payload.type),
                bindparam("at", type_=_MESSAGES.c.created_at.type),
            ),
        )
        .returning(_MESSAGES.c.seq)
    )


# On PostgreSQL the counter's bump feeds the insert in one statement (an UPDATE in a WITH
# is run once, and holds the consultant's row as the UPDATE alone does): a round trip
# fewer for every message. SQLite has no UPDATE in a WITH.
_APPEND_NUMBERED = _numbered_insert(_NEXT_SEQ.cte("numbered"))


def append_numbered_for(consultant_ids: Select[Any]) -> Insert:
    """The numbered append for the consultant `consultant_ids` gives, if it gives one
    (none: nothing is bumped or written, and nothing returned). PostgreSQL only: the
    statement that makes an offer gives its consultant this way, so that the offer and the
    message that tells of it go in one statement, and the message only if the offer was
    made; the count it adds is what tells a later offer's lock that one was made
    (`cases.consultant_if_free`)."""
    return _numbered_insert(
        update(_CONSULTANTS)
        .where(_CONSULTANTS.c.id.in_(consultant_ids))
        .values(message_seq=_CONSULTANTS.c.message_seq + 1)
        .returning(_CONSULTANTS.c.message_seq)
        .cte("numbered")
    )


_AFTER = (
    select(ConsultMessage)
    .where(
        ConsultMessage.consultant_id == bindparam("consultant_id"),
        ConsultMessage.seq > bindparam("seq"),
    )
    .order_by(ConsultMessage.seq)
    .limit(bindparam("limit"))
)


async def append(
    session: AsyncSession,
    consultant_id: str,
    *,
    type: str,
    payload: dict[str, Any],
    at: datetime,
) -> int:
    """Add a message to the consultant's log; returns its seq.

    The counter is bumped with one UPDATE ... RETURNING, which holds the consultant's
    row until commit: two processes never hand out the same seq.
    """
    if dialect_name(session) == "postgresql":
        numbered = await session.execute(
            _APPEND_NUMBERED,
            # Named apart from the consultant's columns, which would be taken as values
            # for the UPDATE to set.
            {"consultant": consultant_id, "for_consultant": consultant_id, "kind": type,
             "document": payload, "at": at},
        )  # fmt: skip
        return int(numbered.scalar_one())
    result = await session.execute(_NEXT_SEQ, {"consultant": consultant_id})
    seq = int(result.scalar_one())
    await session.execute(
        _INSERT_MESSAGE,
        [
            {
                "consultant_id": consultant_id,
                "seq": seq,
                "type": type,
                "payload": payload,
                "created_at": at,
            }
        ],
    )
    return seq


async def after(
    session: AsyncSession, consultant_id: str, *, seq: int, limit: int
) -> list[ConsultMessage]:
    params = {"consultant_id": consultant_id, "seq": seq, "limit": limit}
    return list((await session.execute(_AFTER, params)).scalars())


async def last_seq(session: AsyncSession, consultant_id: str) -> int:
    statement = select(ConsultConsultant.message_seq).where(ConsultConsultant.id == consultant_id)
    value = (await session.execute(statement)).scalar_one_or_none()
    return int(value or 0)


async def purge_before(session: AsyncSession, moment: datetime) -> None:
    await session.execute(delete(ConsultMessage).where(ConsultMessage.created_at < moment))


async def newest_seqs(session: AsyncSession, consultant_ids: list[str]) -> dict[str, int]:
    """Each consultant's newest message seq (0 for none), in one statement."""
    statement = select(ConsultConsultant.id, ConsultConsultant.message_seq).where(
        ConsultConsultant.id.in_(consultant_ids)
    )
    return {row.id: int(row.message_seq) for row in await session.execute(statement)}
