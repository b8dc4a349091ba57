"""Random numbers from the operating system's source, read in bulk.

Ids (62 random bits each) and case references are drawn from the system's randomness,
as `secrets` draws, so none can be told from the ones before it. `secrets` reads the
source once a number: a system call for every id, and more than one for a reference.
Read 64 numbers at a time instead, the embedded default under load on PostgreSQL spent
0.3% of its CPU making ids where it spent 2.6% (py-spy, the same run either way).
"""

from __future__ import annotations

import os
import struct

_DRAWN_AT_ONCE = 64


class RandomBits:
    """62-bit numbers from `os.urandom`, read 64 at a time.

    Safe from any thread without a lock (a list's `pop` is atomic, and two threads that
    find the list empty at once each read a fresh one), and a child process made by
    `fork` starts with none of its parent's numbers, so the two never share one."""

    def __init__(self) -> None:
        self._drawn: list[int] = []
        os.register_at_fork(after_in_child=self._forget)

    def next(self) -> int:
        while True:
            try:
                return self._drawn.pop()
            except IndexError:
                raw = struct.unpack(f"<{_DRAWN_AT_ONCE}Q", os.urandom(8 * _DRAWN_AT_ONCE))
                self._drawn = [number >> 2 for number in raw]

    def _forget(self) -> None:
        self._drawn = []


_BITS = RandomBits()


def random_bits(count: int) -> int:
    """A number of `count` random bits (at most 62)."""
    if not 0 < count <= 62:
        raise ValueError("between 1 and 62 bits a draw")
    return _BITS.next() >> (62 - count)


def random_below(limit: int) -> int:
    """A number from 0 to `limit` - 1, each as likely (at most 2**62 of them): drawn on
    the fewest bits that hold `limit` - 1, and drawn again when it is too large."""
    if not 0 < limit <= 2**62:
        raise ValueError("a limit from 1 to 2**62")
    count = max((limit - 1).bit_length(), 1)
    while True:
        number = random_bits(count)
        if number < limit:
            return number
