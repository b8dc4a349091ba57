"""Identifiers for the rows reach creates: UUIDs that sort by the time they were made.

Every id reach makes is a key of at least one index (cases, events, offers, consults,
the inboxes that drop a repeated event). A random id (UUID version 4) lands on a random
leaf of each index, so every row a transaction writes dirties a page of its own in each:
on SQLite each such page is written whole to the write-ahead log at the commit, and again
to the database at the next checkpoint. Ids that grow with time land on the newest leaf,
which a batch of rows shares. Measured on the embedded default under load (bench/
RESULTS.md): 136 KB written to disk a submitted case with random ids, 59 KB with these.

The layout is RFC 9562's version 7: 48 bits of Unix milliseconds, then 12 bits of the
millisecond's fraction (its method 3), then 62 random bits, which keep an id as hard to
guess as ever a client needed (access is by token, never by knowing an id). The time it
carries, to the millisecond, is when the row was made, which the row says anyway. The
clock is the system's, not the injected one: an id's time places it in its indexes, and
decides nothing but the order of rows whose own times tie where a query orders by time,
then id (creation order now, where it was arbitrary).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from services.shared.randomness import random_bits

_VERSION = 0x7
_VARIANT = 0b10  # RFC 9562's
_NANOSECONDS_A_MILLISECOND = 1_000_000
_FRACTIONS_A_MILLISECOND = 4096  # 12 bits


class TimeOrderedIds:
    """Version 7 UUIDs, each made in this process after the one before it: ids made in
    the same fraction of a millisecond, or after the clock was set back, take the next
    fraction up (the RFC's monotonic counter, in the clock's own bits)."""

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._clock_ns = clock_ns
        self._last = -1  # milliseconds and fraction of the last id, as one 60-bit number

    def next(self) -> uuid.UUID:
        milliseconds, remainder = divmod(self._clock_ns(), _NANOSECONDS_A_MILLISECOND)
        fraction = remainder * _FRACTIONS_A_MILLISECOND // _NANOSECONDS_A_MILLISECOND
        stamp = max(milliseconds * _FRACTIONS_A_MILLISECOND + fraction, self._last + 1)
        # Two threads at once may both take one stamp: their random bits still differ.
        self._last = stamp
        milliseconds, fraction = divmod(stamp, _FRACTIONS_A_MILLISECOND)
        value = (
            (milliseconds & 0xFFFF_FFFF_FFFF) << 80
            | _VERSION << 76
            | fraction << 64
            | _VARIANT << 62
            | random_bits(62)
        )
        return uuid.UUID(int=value)


_IDS = TimeOrderedIds()


def new_id() -> str:
    """A row's id in UUID form (`8-4-4-4-12` hex digits), as cases and offers have."""
    return str(_IDS.next())


def new_event_id() -> str:
    """An event's id: 32 hex digits, as events have always had."""
    return _IDS.next().hex
