"""Ids that sort by when they were made (RFC 9562 version 7)."""

from __future__ import annotations

import time
import uuid

from services.shared.ids import TimeOrderedIds, new_event_id, new_id


def test_an_id_is_a_version_7_uuid_carrying_the_millisecond_it_was_made() -> None:
    before = time.time_ns() // 1_000_000
    made = TimeOrderedIds().next()
    after = time.time_ns() // 1_000_000
    assert made.version == 7
    assert made.variant == uuid.RFC_4122
    assert before <= made.int >> 80 <= after


def test_the_next_12_bits_hold_the_fraction_of_the_millisecond() -> None:
    three_quarters_in = 1_764_900_000_000 * 1_000_000 + 750_000
    made = TimeOrderedIds(clock_ns=lambda: three_quarters_in).next()
    assert made.int >> 80 == 1_764_900_000_000
    assert (made.int >> 64) & 0xFFF == 3072  # 0.75 of 4,096


def test_ids_keep_their_forms() -> None:
    row_id, event_id = new_id(), new_event_id()
    assert str(uuid.UUID(row_id)) == row_id
    assert uuid.UUID(event_id).hex == event_id
    assert uuid.UUID(event_id).version == 7


def test_ids_sort_in_the_order_they_were_made() -> None:
    made = [new_id() for _ in range(10_000)]
    assert made == sorted(made)
    assert len(set(made)) == len(made)


def test_ids_made_in_one_instant_still_sort_in_order() -> None:
    ids = TimeOrderedIds(clock_ns=lambda: 1_764_900_000_000_000_000)
    made = [ids.next() for _ in range(5_000)]  # more than a millisecond's 4,096 fractions
    assert made == sorted(made)
    assert made[-1].int >> 80 == 1_764_900_000_000 + 1


def test_ids_keep_their_order_when_the_clock_is_set_back() -> None:
    readings = iter([2_000_000_000_000, 1_000_000_000_000, 2_000_000_000_000])
    ids = TimeOrderedIds(clock_ns=lambda: next(readings))
    first, after_the_step_back, later = ids.next(), ids.next(), ids.next()
    assert first < after_the_step_back < later


def test_ids_made_in_one_instant_differ_in_their_random_bits() -> None:
    ids = TimeOrderedIds(clock_ns=lambda: 1_764_900_000_000_000_000)
    random_bits = {ids.next().int & (2**62 - 1) for _ in range(1_000)}
    assert len(random_bits) == 1_000
