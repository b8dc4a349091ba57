"""Random numbers read from the system's source in bulk: full, unrepeated, unshared
between threads and between a process and its forked child, evenly spread."""

from __future__ import annotations

import collections
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.shared.randomness import RandomBits, random_below, random_bits


def test_random_bits_fill_62_bits_and_repeat_none() -> None:
    bits = RandomBits()
    drawn = [bits.next() for _ in range(10_000)]  # many reads of the source
    assert all(0 <= number < 2**62 for number in drawn)
    assert max(drawn) >= 2**61  # the top bit is used
    assert len(set(drawn)) == len(drawn)


def test_threads_drawing_at_once_never_share_a_number() -> None:
    bits = RandomBits()
    start = threading.Barrier(8)

    def draw() -> list[int]:
        start.wait()
        return [bits.next() for _ in range(5_000)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        drawn = [number for numbers in pool.map(lambda _: draw(), range(8)) for number in numbers]
    assert len(set(drawn)) == len(drawn) == 40_000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_draws_none_of_its_parents_numbers() -> None:
    bits = RandomBits()
    bits.next()  # the parent holds numbers drawn and not yet used
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover -- the child reports through the pipe
        os.write(writing, struct.pack("<Q", bits.next()))
        os._exit(0)
    os.close(writing)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    (childs,) = struct.unpack("<Q", os.read(reading, 8))
    os.close(reading)
    parents = [bits.next() for _ in range(63)]  # every number the parent had left
    assert childs not in parents


def test_a_number_below_a_limit_is_below_it_and_every_value_comes_up() -> None:
    drawn = collections.Counter(random_below(10) for _ in range(20_000))
    assert set(drawn) == set(range(10))
    assert min(drawn.values()) > 1_700  # 2,000 each on average: no value left out or rare
    assert {random_below(1) for _ in range(100)} == {0}
    assert all(random_bits(3) < 8 for _ in range(1_000))


@pytest.mark.parametrize("limit", [0, -1, 2**62 + 1])
def test_a_limit_out_of_range_is_refused(limit: int) -> None:
    with pytest.raises(ValueError, match="limit"):
        random_below(limit)
