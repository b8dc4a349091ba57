"""Each consultant's numbered message log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.shared.db.base import table_of
from services.shared.db.models import ConsultConsultant, ConsultMessage

# Built once: every message appended and every socket catching up runs these (see
# `repository.cases` for why); the writes on the tables, as Core (see `table_of`).
_CONSULTANTS = table_of(ConsultConsultant)
_NEXT_SEQ = (
    update(_CONSULTANTS)
    .where(_CONSULTANTS.c.id == bindparam("consultant"))
    .values(message_seq=_CONSULTANTS.c.message_seq + 1)
    .returning(_CONSULTANTS.c.message_seq)
)
_INSERT_MESSAGE = insert(table_of(ConsultMessage))
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
