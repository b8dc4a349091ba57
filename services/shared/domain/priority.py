"""Case priority: 1 is the most urgent, 4 the least.

The paramedic sees it on the case; the router orders its queue by it (then by waiting
time, with ageing so that a low-priority case is not starved).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime, timedelta

from services.shared.domain.news2 import News2Result
from services.shared.domain.vocabulary import CallCategory, News2Risk, RiskFlag

HIGHEST_PRIORITY = 1
LOWEST_PRIORITY = 4
# How many levels waiting can raise a case: from the lowest priority to the highest.
AGEING_STEPS = LOWEST_PRIORITY - HIGHEST_PRIORITY
# The earliest time there is: no case was created before it, so a bound there ages none.
_NO_CASE_AGED = datetime.min.replace(tzinfo=UTC)

_BY_RISK = {
    News2Risk.HIGH: 1,
    News2Risk.MEDIUM: 2,
    News2Risk.LOW_MEDIUM: 2,
    News2Risk.LOW: 4,
}
# Without a complete observation set nothing says the patient is well: assume middling.
_UNSCORED = 3
_BY_CATEGORY = {
    CallCategory.C1: 1,
    CallCategory.C2: 2,
    CallCategory.C3: 3,
    CallCategory.C4: 4,
}
# Any risk flag (a known non-conveyance danger) lifts the case at least to this level.
_FLAGGED = 3


def case_priority(
    *,
    news2: News2Result | None,
    call_category: CallCategory,
    risk_flags: Collection[RiskFlag],
) -> int:
    """The most urgent of what the observations, the call category and the flags say."""
    by_news = _UNSCORED if news2 is None else _BY_RISK[news2.risk]
    level = min(by_news, _BY_CATEGORY[call_category])
    if risk_flags:
        level = min(level, _FLAGGED)
    return level


def aged_priority(priority: int, *, waited_seconds: float, ageing_step_seconds: float) -> int:
    """Priority raised one level for every `ageing_step_seconds` waited, never above 1."""
    if ageing_step_seconds <= 0:
        return priority
    steps = int(max(waited_seconds, 0.0) // ageing_step_seconds)
    return max(HIGHEST_PRIORITY, priority - steps)


def ageing_bounds(now: datetime, *, ageing_step_seconds: float) -> tuple[datetime, ...]:
    """When a case must have been created by to have aged 1, 2 ... `AGEING_STEPS` levels
    by `now` (`aged_priority`): the same rule as bounds on creation time, for a database
    to order by. At a bound itself the two may differ by a microsecond's rounding."""
    if ageing_step_seconds <= 0:
        return (_NO_CASE_AGED,) * AGEING_STEPS
    return tuple(_aged_by(now, step * ageing_step_seconds) for step in range(1, AGEING_STEPS + 1))


def _aged_by(now: datetime, waited_seconds: float) -> datetime:
    """`now` less the wait, or the earliest time there is if no case can have waited so
    long (a step set beyond the calendar, or infinite, means no ageing, as it does for
    `aged_priority`, not a pass that fails)."""
    try:
        return now - timedelta(seconds=waited_seconds)
    except OverflowError:
        return _NO_CASE_AGED
