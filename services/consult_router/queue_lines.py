"""The open queue as the dashboards receive it: every open case's line, encoded once.

The queue is read at every change (once for all the dashboards connected to a process)
and at every dashboard's welcome, and most of each line is the same as at the last read:
a case's reference, specialty, call category and arrival are fixed when it opens, and its
priority, NEWS2 score and risk flags change only with a newer snapshot from the crew (the
case's `version`). So a read takes each open case's marks (version, status,
escalations) and who holds its offers, and keeps each case's fixed part, encoded, by
version. The fixed part of a case received since the newest one kept (a new case: most
changes bring one) comes in the marks' statement, picked out of the clinical document by
the database; any other case whose version this process has not seen (a newer snapshot,
a case received out of turn) is read in a statement of its own. What a line's time and
marks add is encoded at each read.

At 400 dashboards this read was the largest part of what reach spends on a broadcast
beyond the sends, and a backlog makes every read longer: a line kept costs its marks,
not the score and flags picked out of a JSON document, decoded, validated and encoded
again (see `bench/RESULTS.md`). Keeping lines but reading each new case's in a statement
of its own gained nothing in a served process: a statement's fixed cost, with the caches
a broadcast leaves cold, is as much as the lines it spared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from services.consult_router.repository import cases as case_repo
from services.consult_router.repository.cases import FixedLine
from services.consult_router.schemas import QueueLineFixed
from services.shared.clock import Clock
from services.shared.db.session import connection_alone

# The open cases shown, the first this many in the queue's order (most urgent first,
# then the longest waiting): in a backlog beyond it the least urgent are not shown, and
# not read at each change.
QUEUE_LIMIT = 500
# A case is received (its row written) a moment before it commits, so a case received
# just before the newest one kept may become visible after it: the database gives the
# fixed lines of cases received this long before the newest kept too. Every read gives
# them again, kept or not, at about 7 us a line with the caches a broadcast leaves cold:
# at 50 cases a second, 2 s of overlap was 100 lines a read given for nothing. Half a
# second is still hundreds of times a commit's usual wait. One received out of turn by
# more than this (a commit that waited longer, another router replica's clock behind)
# costs a statement of its own (`case_repo.fixed_lines`), never a wrong line; a clock
# ahead is not followed beyond the reader's own now (`_since`).
ARRIVALS_OVERLAP = timedelta(seconds=0.5)
EVERY_CASE = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class _Kept:
    version: int
    priority: int
    created_at: datetime
    # The line's JSON object as far as its fixed fields go: no closing brace.
    head: str


def fixed_head(line: FixedLine) -> str:
    """A line's JSON object as far as its fixed fields go, without its closing brace."""
    part = QueueLineFixed(
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
        # When the router received the newest case kept: the next read asks the database
        # for the fixed lines of cases received since (less `ARRIVALS_OVERLAP`) with
        # their marks.
        self._newest_received: datetime | None = None

    def __len__(self) -> int:
        """How many cases' fixed lines are kept."""
        return len(self._kept)

    async def read(self, engine: AsyncEngine, clock: Clock) -> str:
        """The queue, encoded, in a look of its own (the feed's read at each change)."""
        async with connection_alone(engine) as connection:
            return await self.encoded(connection, now=clock.now())

    def _since(self, now: datetime) -> datetime:
        """From when the next read takes fixed lines with the marks: the newest case kept,
        or now if that case's replica's clock ran ahead (else every case received until
        then would be read apart), less the overlap; every case on a first read."""
        if self._newest_received is None:
            return EVERY_CASE
        return min(self._newest_received, now) - ARRIVALS_OVERLAP

    def _keep(self, line: FixedLine) -> _Kept:
        kept = _Kept(line.version, line.priority, line.created_at, fixed_head(line))
        self._kept[line.case_id] = kept
        if self._newest_received is None or line.received_at > self._newest_received:
            self._newest_received = line.received_at
        return kept

    async def encoded(self, db: AsyncSession | AsyncConnection, *, now: datetime) -> str:
        """The open queue's items as a JSON array: most urgent first, then the longest
        waiting, each the JSON form of a `QueueItem`."""
        marks = await case_repo.queue_marks(db, limit=QUEUE_LIMIT, since=self._since(now))
        holders = await case_repo.every_open_offer_holder(db)
        found: dict[str, _Kept] = {}
        missing: list[str] = []
        for mark in marks:
            kept = self._kept.get(mark.case_id)
            if kept is not None and kept.version == mark.version:
                found[mark.case_id] = kept
            elif mark.fixed is not None:
                found[mark.case_id] = self._keep(mark.fixed)
            else:  # a newer snapshot of a case kept, or one received out of turn
                missing.append(mark.case_id)
        if missing:
            for line in await case_repo.fixed_lines(db, missing):
                found[line.case_id] = self._keep(line)
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
