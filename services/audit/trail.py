"""Appending to the trail and reading it back.

Appends take the chain head row's lock (`FOR UPDATE` on PostgreSQL; SQLite has one writer),
so whichever replica appends, entries are numbered without gaps and each links to the one
before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from services.audit.chain import GENESIS, canonical, link
from services.audit.redaction import details_of
from services.shared.db.base import read_only_row, table_of
from services.shared.db.models import AuditChainHead, AuditEntry
from services.shared.db.statements import insert_if_absent, insert_many
from services.shared.schemas.events import Event

HEAD_ID = 1

# Appending writes as Core on the tables (see `table_of`): the entries are new rows the
# session need not track (one statement for a batch's, `insert_many`), and the head's
# object is brought up to date here.
# Read afresh every time: an append undone with its savepoint leaves the session's head
# object as the append left it (its new values were set, not flushed).
_HEAD_LOCKED = (
    select(AuditChainHead)
    .where(AuditChainHead.id == HEAD_ID)
    .with_for_update()
    .execution_options(populate_existing=True)
)
_HEADS = table_of(AuditChainHead)
_MOVE_HEAD = (
    update(_HEADS)
    .where(_HEADS.c.id == HEAD_ID)
    .values(seq=bindparam("last_seq"), hash=bindparam("last_hash"))
)


@dataclass(frozen=True)
class NewEntry:
    event_id: str
    event_type: str
    source: str
    subject_id: str
    actor_sub: str | None
    actor_role: str | None
    occurred_at: datetime
    details: dict[str, Any]

    @classmethod
    def of(cls, event: Event) -> NewEntry:
        return cls(
            event_id=event.id,
            event_type=event.type,
            source=event.source,
            subject_id=event.subject_id,
            actor_sub=event.actor.sub if event.actor else None,
            actor_role=event.actor.role if event.actor else None,
            occurred_at=event.occurred_at,
            details=details_of(event),
        )


def entry_hash(entry: AuditEntry | Any, prev_hash: str) -> str:
    """The hash an entry must carry, from its stored fields and its predecessor's hash."""
    return link(
        prev_hash,
        canonical(
            seq=entry.seq,
            event_id=entry.event_id,
            event_type=entry.event_type,
            source=entry.source,
            subject_id=entry.subject_id,
            actor_sub=entry.actor_sub,
            actor_role=entry.actor_role,
            occurred_at=entry.occurred_at,
            recorded_at=entry.recorded_at,
            details=entry.details,
        ),
    )


async def locked_head(session: AsyncSession) -> AuditChainHead:
    """The chain's head row, locked. It is made by the first append ever (whichever
    replica gets there first); after that, taking it is one statement."""
    head = (await session.execute(_HEAD_LOCKED)).scalar_one_or_none()
    if head is None:
        await insert_if_absent(session, AuditChainHead, {"id": HEAD_ID, "seq": 0, "hash": GENESIS})
        head = (await session.execute(_HEAD_LOCKED)).scalar_one()
    return head


async def append(session: AsyncSession, new: NewEntry, *, recorded_at: datetime) -> AuditEntry:
    (entry,) = await append_many(session, [new], recorded_at=recorded_at)
    return entry


async def append_many(
    session: AsyncSession, news: list[NewEntry], *, recorded_at: datetime
) -> list[AuditEntry]:
    """Append entries in order under one lock of the head: a batch costs one insert."""
    head = await locked_head(session)
    seq, prev_hash = head.seq, head.hash
    rows: list[dict[str, Any]] = []
    appended = []
    for new in news:
        seq += 1
        row = {
            "seq": seq, "event_id": new.event_id, "event_type": new.event_type,
            "source": new.source, "subject_id": new.subject_id, "actor_sub": new.actor_sub,
            "actor_role": new.actor_role, "occurred_at": new.occurred_at,
            "recorded_at": recorded_at, "details": new.details, "prev_hash": prev_hash,
        }  # fmt: skip
        entry = read_only_row(AuditEntry, row)
        row["hash"] = prev_hash = entry_hash(entry, prev_hash)
        set_committed_value(entry, "hash", prev_hash)
        rows.append(row)
        appended.append(entry)
    if not rows:
        return appended
    await insert_many(session, AuditEntry, rows)
    await session.execute(_MOVE_HEAD, {"last_seq": seq, "last_hash": prev_hash})
    set_committed_value(head, "seq", seq)
    set_committed_value(head, "hash", prev_hash)
    return appended


async def entries(
    session: AsyncSession,
    *,
    subject_id: str | None,
    event_type: str | None,
    after: int,
    limit: int,
) -> list[AuditEntry]:
    statement = select(AuditEntry).where(AuditEntry.seq > after)
    if subject_id is not None:
        statement = statement.where(AuditEntry.subject_id == subject_id)
    if event_type is not None:
        statement = statement.where(AuditEntry.event_type == event_type)
    rows = await session.execute(statement.order_by(AuditEntry.seq).limit(limit))
    return list(rows.scalars())
