"""The open queue as the dashboards receive it: every open case's line, encoded once.

The queue is read at every change (once for all the dashboards connected to a process)
and at every dashboard's welcome, and most of each line is the same as at the last read:
a case's reference, specialty, call category and arrival are fixed when it opens, and its
priority, NEWS2 score and risk flags change only with a newer snapshot from the crew (the
case's `version`). So a read takes each open case's marks (version, status,
escalations) and who holds its offers; the fixed part of a line is read, picked out of
the clinical document by the database, and encoded only for a case whose version this
process has not seen, and kept for the next read. What a line's time and marks add is
encoded at each read.

At 400 dashboards this read was the largest part of what reach spends on a broadcast
beyond the sends (see `bench/RESULTS.md`), and a backlog makes every read longer: a line
kept costs its marks' row, not the score and flags picked out of a JSON document, decoded,
validated and encoded again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from services.consult_router.repository import cases as case_repo
from services.consult_router.repository.cases import FixedLine
from services.shared.clock import Clock
from services.shared.db.session import connection_alone

# The most urgent and longest waiting first: a backlog beyond this is not shown, and is
# not read at each change.
QUEUE_LIMIT = 500


class _FixedPart(BaseModel):
    """A line's fixed fields, in the form `QueueItem` gives them."""

    case_id: str
    reference: str
    priority: int
    specialty: str
    call_category: str
    news2: dict[str, Any] | None
    risk_flags: list[str]
    waiting_since: AwareDatetime


@dataclass(frozen=True, slots=True)
class _Kept:
    version: int
    priority: int
    created_at: datetime
    # The line's JSON object as far as its fixed fields go: no closing brace.
    head: str


def fixed_head(line: FixedLine) -> str:
    """A line's JSON object as far as its fixed fields go, without its closing brace."""
    part = _FixedPart(
        case_id=line.case_id,
        reference=line.reference,
        priority=line.priority,
        specialty=line.specialty,
        call_category=line.call_category,
        news2=line.news2,
        risk_flags=line.risk_flags or [],
        waiting_since=line.created_at,
    )
    return part.model_dump_json()[:-1]


def encode_line(
    head: str, *, status: str, waiting_seconds: float, held_by: list[str], escalated: bool
) -> str:
    """A line's JSON: its fixed fields' `head`, then what changes from read to read. A
    finite float's JSON number is its `repr`, as `json.dumps` writes it."""
    return (
        f'{head},"status":{json.dumps(status)},"waiting_seconds":{waiting_seconds!r},'
        f'"held_by":{json.dumps(held_by) if held_by else "[]"},'
        f'"escalated":{"true" if escalated else "false"}}}'
    )


class QueueLines:
    """The queue's reads for one process, with each case's fixed line kept by version.

    Reads may run side by side (the feed's and a welcome's): each builds its lines from
    what it found kept and what it read itself, so one read's keeping or forgetting
    never changes another's result."""

    def __init__(self) -> None:
        self._kept: dict[str, _Kept] = {}

    def __len__(self) -> int:
        """How many cases' fixed lines are kept."""
        return len(self._kept)

    async def read(self, engine: AsyncEngine, clock: Clock) -> str:
        """The queue, encoded, in a look of its own (the feed's read at each change)."""
        async with connection_alone(engine) as connection:
            return await self.encoded(connection, now=clock.now())

    async def encoded(
        self, db: AsyncSession | AsyncConnection, *, now: datetime, limit: int = QUEUE_LIMIT
    ) -> str:
        """The open queue's items as a JSON array: most urgent first, then the longest
        waiting, as `QueueItem` describes them."""
        marks = await case_repo.queue_marks(db, limit=limit)
        holders = await case_repo.open_offer_holders(db, [mark.case_id for mark in marks])
        found: dict[str, _Kept] = {}
        for mark in marks:
            kept = self._kept.get(mark.case_id)
            if kept is not None and kept.version == mark.version:
                found[mark.case_id] = kept
        missing = [mark.case_id for mark in marks if mark.case_id not in found]
        if missing:
            for line in await case_repo.fixed_lines(db, missing):
                kept = _Kept(line.version, line.priority, line.created_at, fixed_head(line))
                found[line.case_id] = self._kept[line.case_id] = kept
        # Forget the cases no longer open (or beyond the limit): kept lines stay as many
        # as the queue shows.
        if len(self._kept) > len(marks):
            shown = {mark.case_id for mark in marks}
            for case_id in [case_id for case_id in self._kept if case_id not in shown]:
                del self._kept[case_id]
        lines: list[tuple[int, float, str]] = []
        for mark in marks:
            kept = found.get(mark.case_id)
            if kept is None:  # gone between the two reads: the next read has it right
                continue
            waiting = max((now - kept.created_at).total_seconds(), 0.0)
            held_by = sorted(holders.get(mark.case_id, ()))
            encoded = encode_line(
                kept.head,
                status=mark.status,
                waiting_seconds=waiting,
                held_by=held_by,
                escalated=mark.escalations > 0,
            )
            lines.append((kept.priority, -waiting, encoded))
        # Most urgent first, then the longest waiting; the sort is stable, so cases
        # waiting alike keep the read's order (oldest first).
        lines.sort(key=lambda line: (line[0], line[1]))
        return "[" + ",".join(line[2] for line in lines) + "]"
