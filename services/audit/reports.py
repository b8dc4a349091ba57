"""The redirection report: per group, the cases created in the window, their outcomes, the
redirection rate and the times to accept and to advice as medians and 90th centiles.

Definitions (CONTRACT.md, "Redirection, defined once"): the redirection rate is the cases
whose disposition is `redirect` or `home` over the cases with any disposition; cancelled
cases count in neither. Times run from the case's creation. Centiles interpolate linearly
between the closest ranks (Hyndman and Fan's type 7, the default of R, NumPy and
spreadsheets). Days are calendar days in Europe/London, as the trust keeps them.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.shared.db.models import AuditDisposition
from services.shared.domain.vocabulary import Disposition

LONDON = ZoneInfo("Europe/London")
DISPOSITIONS = tuple(d.value for d in Disposition)
REDIRECTED = frozenset({Disposition.REDIRECT.value, Disposition.HOME.value})
UNKNOWN = "unknown"


class GroupBy(StrEnum):
    DAY = "day"
    SPECIALTY = "specialty"
    PATHWAY = "pathway"
    CALL_CATEGORY = "call_category"


@dataclass(frozen=True)
class Outcome:
    created_at: datetime
    specialty: str | None
    call_category: str | None
    disposition: str | None
    pathway: str | None
    cancelled: bool
    accept_seconds: float | None
    advice_seconds: float | None


def centile(values: Sequence[float], fraction: float) -> float | None:
    """Type 7: the value at rank (n - 1) * fraction, interpolating between neighbours."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * fraction
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _key(outcome: Outcome, group_by: GroupBy) -> str:
    if group_by is GroupBy.DAY:
        return outcome.created_at.astimezone(LONDON).date().isoformat()
    if group_by is GroupBy.SPECIALTY:
        return outcome.specialty or UNKNOWN
    if group_by is GroupBy.CALL_CATEGORY:
        return outcome.call_category or UNKNOWN
    # By pathway: cases with no pathway (conveyed, home without one, not yet advised,
    # cancelled) are grouped as "none".
    return outcome.pathway or "none"


def _times(values: list[float]) -> dict[str, float | None]:
    return {"median_seconds": centile(values, 0.5), "p90_seconds": centile(values, 0.9)}


def summarise(outcomes: Iterable[Outcome]) -> dict[str, Any]:
    counts = dict.fromkeys(DISPOSITIONS, 0)
    cases = cancelled = 0
    accept: list[float] = []
    advice: list[float] = []
    for outcome in outcomes:
        cases += 1
        if outcome.cancelled and outcome.disposition is None:
            cancelled += 1
        if outcome.disposition in counts:
            counts[outcome.disposition] += 1
        if outcome.accept_seconds is not None:
            accept.append(outcome.accept_seconds)
        if outcome.advice_seconds is not None:
            advice.append(outcome.advice_seconds)
    decided = sum(counts.values())
    redirected = sum(counts[d] for d in REDIRECTED)
    return {
        "cases": cases,
        "dispositions": counts,
        "cancelled": cancelled,
        "open": cases - decided - cancelled,
        "redirection_rate": redirected / decided if decided else None,
        "time_to_accept": _times(accept),
        "time_to_advice": _times(advice),
    }


def build(
    outcomes: Sequence[Outcome], *, group_by: GroupBy, start: datetime, end: datetime
) -> dict[str, Any]:
    groups: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        groups[_key(outcome, group_by)].append(outcome)
    return {
        "from": start,
        "to": end,
        "group_by": group_by.value,
        "groups": [{"group": key, **summarise(groups[key])} for key in sorted(groups)],
        "total": summarise(outcomes),
    }


CSV_COLUMNS = (
    "group", "cases", *DISPOSITIONS, "cancelled", "open", "redirection_rate",
    "time_to_accept_median_seconds", "time_to_accept_p90_seconds",
    "time_to_advice_median_seconds", "time_to_advice_p90_seconds",
)  # fmt: skip


def to_csv(report: dict[str, Any]) -> str:
    """One row per group and a last row `total`; empty cells where there is no value."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in [*report["groups"], {"group": "total", **report["total"]}]:
        writer.writerow([
            row["group"], row["cases"], *(row["dispositions"][d] for d in DISPOSITIONS),
            row["cancelled"], row["open"], _cell(row["redirection_rate"]),
            _cell(row["time_to_accept"]["median_seconds"]),
            _cell(row["time_to_accept"]["p90_seconds"]),
            _cell(row["time_to_advice"]["median_seconds"]),
            _cell(row["time_to_advice"]["p90_seconds"]),
        ])  # fmt: skip
    return buffer.getvalue()


def _cell(value: float | None) -> str:
    return "" if value is None else repr(round(value, 6))


async def outcomes_between(session: AsyncSession, start: datetime, end: datetime) -> list[Outcome]:
    statement = select(AuditDisposition).where(
        AuditDisposition.created_at >= start, AuditDisposition.created_at < end
    )
    rows = (await session.execute(statement)).scalars()
    return [
        Outcome(
            created_at=row.created_at,
            specialty=row.specialty,
            call_category=row.call_category,
            disposition=row.disposition,
            pathway=row.pathway,
            cancelled=row.cancelled_at is not None,
            accept_seconds=row.accept_seconds,
            advice_seconds=row.advice_seconds,
        )
        for row in rows
        if row.created_at is not None
    ]
