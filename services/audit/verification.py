"""Verifying the chain: recompute every hash in order and name the first entry that does
not fit — edited (its hash no longer matches), deleted (a gap in the numbers), inserted or
cut off (the entries and the head disagree).

Incremental by default: a verification that passes leaves a checkpoint, and the next one
re-checks the checkpoint's own entry and then only what came after it. `full=True` starts
from the first entry; a background loop does that periodically, so an edit to an old entry
is found too. Batches are read in separate short transactions (the trail only grows), so
verifying never holds SQLite's one write lock for long.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.audit.chain import GENESIS
from services.audit.trail import HEAD_ID, entry_hash
from services.shared.db.models import AuditChainHead, AuditCheckpoint, AuditEntry
from services.shared.db.session import SessionMaker, unit_of_work
from services.shared.db.statements import insert_if_absent

BATCH = 5000
CHECKPOINT_ID = 1


@dataclass(frozen=True)
class Verdict:
    ok: bool
    events: int
    head: str
    first_bad_seq: int | None
    checked_from: int
    checked: int


@dataclass
class _Walk:
    expected: int
    prev_hash: str
    checked: int = 0
    first_bad: int | None = None


async def verify(maker: SessionMaker, *, now: datetime, full: bool = False) -> Verdict:
    async with unit_of_work(maker) as session:
        head = await session.get(AuditChainHead, HEAD_ID)
        checkpoint = None if full else await session.get(AuditCheckpoint, CHECKPOINT_ID)
        head_seq, head_hash = (head.seq, head.hash) if head else (0, GENESIS)
        start, prev_hash = (checkpoint.seq, checkpoint.hash) if checkpoint else (0, GENESIS)
        bad_checkpoint = checkpoint is not None and not await _entry_intact(
            session, checkpoint.seq, checkpoint.hash
        )
    if bad_checkpoint:
        return Verdict(False, head_seq, head_hash, start, start, 1)
    walk = await _walk(maker, _Walk(expected=start + 1, prev_hash=prev_hash), upto=head_seq)
    if walk.first_bad is None:
        walk.first_bad = await _judge_the_end(maker, walk, head_seq, head_hash)
    ok = walk.first_bad is None
    if ok and head_seq > start:
        async with unit_of_work(maker) as session:
            await _save_checkpoint(session, head_seq, head_hash, now)
    return Verdict(ok, head_seq, head_hash, walk.first_bad, start + 1, walk.checked)


async def _entry_intact(session: AsyncSession, seq: int, expected_hash: str) -> bool:
    entry = await session.get(AuditEntry, seq)
    return (
        entry is not None
        and entry.hash == expected_hash
        and entry_hash(entry, entry.prev_hash) == expected_hash
    )


async def _walk(maker: SessionMaker, walk: _Walk, *, upto: int) -> _Walk:
    """Recompute each hash in order, up to the head as it was when we began: entries
    appended meanwhile are the next verification's business."""
    while walk.first_bad is None and walk.expected <= upto:
        async with unit_of_work(maker) as session:
            rows = await _batch(session, after=walk.expected - 1, upto=upto)
        for row in rows:
            if row.seq != walk.expected or row.prev_hash != walk.prev_hash:
                walk.first_bad = walk.expected
                break
            if entry_hash(row, walk.prev_hash) != row.hash:
                walk.first_bad = row.seq
                break
            walk.prev_hash, walk.expected = row.hash, walk.expected + 1
            walk.checked += 1
        if len(rows) < BATCH:
            break
    return walk


async def _judge_the_end(
    maker: SessionMaker, walk: _Walk, head_seq: int, head_hash: str
) -> int | None:
    last = walk.expected - 1
    if last < head_seq:
        return last + 1  # rows cut off the end
    if walk.prev_hash != head_hash:
        return head_seq  # the last row rewritten with its hash; the head knows
    return await _row_beyond_head(maker)


async def _row_beyond_head(maker: SessionMaker) -> int | None:
    """A row numbered past the head is one nobody appended: an insertion. The newest
    number is read before the head, so an append committing in between (the head only
    grows) cannot look like one."""
    async with unit_of_work(maker) as session:
        newest = (await session.execute(select(func.max(AuditEntry.seq)))).scalar()
        head = await session.get(AuditChainHead, HEAD_ID, populate_existing=True)
    head_seq = head.seq if head else 0
    return head_seq + 1 if newest is not None and newest > head_seq else None


async def _batch(session: AsyncSession, *, after: int, upto: int) -> list[AuditEntry]:
    statement = (
        select(AuditEntry)
        .where(AuditEntry.seq > after, AuditEntry.seq <= upto)
        .order_by(AuditEntry.seq)
    )
    rows = await session.execute(statement.limit(BATCH).execution_options(populate_existing=True))
    found = list(rows.scalars())
    session.expunge_all()
    return found


async def _save_checkpoint(session: AsyncSession, seq: int, hash_: str, now: datetime) -> None:
    values = {"id": CHECKPOINT_ID, "seq": seq, "hash": hash_, "verified_at": now}
    if not await insert_if_absent(session, AuditCheckpoint, values):
        checkpoint = await session.get(AuditCheckpoint, CHECKPOINT_ID, with_for_update=True)
        if checkpoint is not None and checkpoint.seq < seq:
            checkpoint.seq, checkpoint.hash, checkpoint.verified_at = seq, hash_, now
