"""Group commit: writes that arrive together share a transaction; anything a batch does not
store goes back to its caller. On SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.embedded import EmbeddedSettings
from services.shared.clock import ManualClock
from services.shared.db.base import table_of
from services.shared.db.group_commit import GroupCommit, WriteBatch
from services.shared.db.models import TriageInbox
from services.shared.db.session import unit_of_work
from services.shared.db.statements import insert_many_if_absent
from services.shared.resources import Resources, open_resources


@pytest.fixture
async def resources(settings: EmbeddedSettings, clock: ManualClock) -> AsyncIterator[Resources]:
    async with open_resources(settings, clock=clock) as built:
        yield built


class InboxWriter:
    """Writes event ids into the triage inbox, one statement per batch, and remembers the
    size of every batch it was given."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.batches: list[int] = []

    async def __call__(self, session: AsyncSession, items: Sequence[str]) -> list[bool]:
        self.batches.append(len(items))
        rows = [
            {"event_id": item, "source": "test", "event_type": "t", "received_at": self.clock.now()}
            for item in items
        ]
        stored = await insert_many_if_absent(session, TriageInbox, rows, returning="event_id")
        # An id twice in one batch is stored once: its first comer gets True.
        answers, seen = [], set()
        for item in items:
            answers.append(item in stored and item not in seen)
            seen.add(item)
        return answers


def group_commit(
    resources: Resources, write: WriteBatch[str], *, max_batch: int = 64, writers: int = 1
) -> GroupCommit[str]:
    return GroupCommit[str](
        resources.sessionmaker, write, max_batch=max_batch, name="test", writers=writers
    )


async def stored_ids(resources: Resources) -> list[str]:
    async with unit_of_work(resources.sessionmaker) as session:
        return sorted((await session.execute(select(TriageInbox.event_id))).scalars())


async def test_items_arriving_together_share_one_transaction(
    resources: Resources, clock: ManualClock
) -> None:
    writer = InboxWriter(clock)
    intake = group_commit(resources, writer)
    ids = [f"event-{n:02d}" for n in range(30)]
    answers = await asyncio.gather(*(intake.submit(item) for item in ids))
    assert answers == [True] * 30
    assert writer.batches == [30]
    assert await stored_ids(resources) == ids


async def test_batches_are_cut_at_the_maximum(resources: Resources, clock: ManualClock) -> None:
    writer = InboxWriter(clock)
    intake = group_commit(resources, writer, max_batch=8)
    answers = await asyncio.gather(*(intake.submit(f"event-{n:02d}") for n in range(30)))
    assert answers == [True] * 30
    assert writer.batches == [8, 8, 8, 6]


async def test_a_lone_item_is_written_at_once_and_the_writer_goes_away(
    resources: Resources, clock: ManualClock
) -> None:
    writer = InboxWriter(clock)
    intake = group_commit(resources, writer)
    assert await intake.submit("only") is True
    assert await intake.submit("next") is True
    assert writer.batches == [1, 1]
    assert await stored_ids(resources) == ["next", "only"]


async def test_what_a_batch_did_not_store_goes_back_to_its_caller(
    resources: Resources, clock: ManualClock
) -> None:
    writer = InboxWriter(clock)
    intake = group_commit(resources, writer)
    assert await intake.submit("taken") is True
    answers = await asyncio.gather(*(intake.submit(item) for item in ["a", "taken", "b", "a"]))
    assert answers == [True, False, True, False]
    assert await stored_ids(resources) == ["a", "b", "taken"]


async def test_a_failed_batch_stores_nothing_and_hands_every_item_back(
    resources: Resources, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    inner = InboxWriter(clock)
    # A driver's message may repeat a statement's parameters, and those may be a patient's.
    message = "patient Jane Doe, NHS 943 476 5919"

    async def write_then_fail(session: AsyncSession, items: Sequence[str]) -> list[bool]:
        await inner(session, items)
        raise RuntimeError(message)

    intake = group_commit(resources, write_then_fail)
    with caplog.at_level(logging.ERROR, logger="reach.db.group_commit"):
        answers = await asyncio.gather(*(intake.submit(f"event-{n}") for n in range(5)))
    assert answers == [False] * 5
    assert await stored_ids(resources) == []  # rolled back
    assert "a batch of 5 failed: RuntimeError" in caplog.text
    assert "Jane" not in caplog.text
    assert "943" not in caplog.text
    # The writer recovers: the next item is written as usual.
    intake._write = inner
    assert await intake.submit("after") is True


async def test_a_writer_that_answers_for_too_few_items_is_trusted_for_none(
    resources: Resources, clock: ManualClock
) -> None:
    async def short(session: AsyncSession, items: Sequence[str]) -> list[bool]:
        return [True]

    intake = group_commit(resources, short)
    answers = await asyncio.gather(*(intake.submit(str(n)) for n in range(3)))
    assert answers == [False, False, False]


async def test_a_caller_that_stops_waiting_does_not_stop_the_others(
    resources: Resources, clock: ManualClock
) -> None:
    writer = InboxWriter(clock)
    intake = group_commit(resources, writer)
    impatient = asyncio.create_task(intake.submit("impatient"))
    patient = asyncio.create_task(intake.submit("patient"))
    await asyncio.sleep(0)  # both queued, the writer started
    impatient.cancel()
    assert await patient is True
    # The cancelled caller's item was queued already: written all the same.
    assert await stored_ids(resources) == ["impatient", "patient"]


async def test_count_of_rows_matches_answers_under_sustained_arrivals(
    resources: Resources, clock: ManualClock
) -> None:
    writer = InboxWriter(clock)
    intake = group_commit(resources, writer, max_batch=16)

    async def arrive(n: int) -> Any:
        await asyncio.sleep((n % 7) * 0.001)
        return await intake.submit(f"event-{n:03d}")

    answers = await asyncio.gather(*(arrive(n) for n in range(120)))
    assert all(answers)
    assert sum(writer.batches) == 120
    assert len(writer.batches) < 120  # some arrived together
    async with unit_of_work(resources.sessionmaker) as session:
        assert await session.scalar(select(func.count()).select_from(TriageInbox)) == 120


async def test_an_outage_is_a_warning_and_every_item_goes_alone(
    resources: Resources, caplog: pytest.LogCaptureFixture
) -> None:
    async def unreachable(session: AsyncSession, items: Sequence[str]) -> list[bool]:
        raise ConnectionRefusedError("connection refused")

    intake = group_commit(resources, unreachable)
    with caplog.at_level(logging.WARNING, logger="reach.db.group_commit"):
        answers = await asyncio.gather(*(intake.submit(str(n)) for n in range(3)))
    assert answers == [False, False, False]
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "database unreachable; 3 go alone" in caplog.text


class HeldFirstBatch:
    """A writer whose first batch waits for `release` before it touches the database."""

    def __init__(self, clock: ManualClock) -> None:
        self.inner = InboxWriter(clock)
        self.first_waiting = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, session: AsyncSession, items: Sequence[str]) -> list[bool]:
        if not self.first_waiting.is_set():
            self.first_waiting.set()
            await self.release.wait()
        return await self.inner(session, items)


async def test_with_two_writers_a_batch_is_written_while_another_waits(
    resources: Resources, clock: ManualClock
) -> None:
    writer = HeldFirstBatch(clock)
    intake = group_commit(resources, writer, writers=2)
    first = asyncio.create_task(intake.submit("first"))
    await writer.first_waiting.wait()
    assert await intake.submit("second") is True
    assert not first.done()
    writer.release.set()
    assert await first is True
    assert await stored_ids(resources) == ["first", "second"]


async def test_with_two_writers_items_arriving_together_are_shared_between_them(
    resources: Resources, clock: ManualClock
) -> None:
    writer = InboxWriter(clock)
    intake = group_commit(resources, writer, writers=2)
    ids = [f"event-{n:02d}" for n in range(31)]
    answers = await asyncio.gather(*(intake.submit(item) for item in ids))
    assert answers == [True] * 31
    assert sorted(writer.batches) == [15, 16]
    assert await stored_ids(resources) == ids


async def test_shares_are_still_cut_at_the_maximum(
    resources: Resources, clock: ManualClock
) -> None:
    writer = InboxWriter(clock)
    intake = group_commit(resources, writer, max_batch=8, writers=2)
    answers = await asyncio.gather(*(intake.submit(f"event-{n:02d}") for n in range(30)))
    assert answers == [True] * 30
    assert sorted(writer.batches) == [6, 8, 8, 8]


async def test_with_one_writer_the_next_batch_waits_for_the_one_being_written(
    resources: Resources, clock: ManualClock
) -> None:
    writer = HeldFirstBatch(clock)
    intake = group_commit(resources, writer)
    first = asyncio.create_task(intake.submit("first"))
    await writer.first_waiting.wait()
    second = asyncio.create_task(intake.submit("second"))
    for _ in range(20):
        await asyncio.sleep(0)
    assert writer.inner.batches == []
    writer.release.set()
    assert [await first, await second] == [True, True]
    assert writer.inner.batches == [1, 1]


def test_a_group_commit_needs_a_writer(resources: Resources, clock: ManualClock) -> None:
    with pytest.raises(ValueError, match="needs a writer"):
        group_commit(resources, InboxWriter(clock), writers=0)


class PlainInboxWriter(InboxWriter):
    """Writes the batch as one plain insert, leaving it to the database to find an id taken
    (which fails the whole batch), as a writer in one statement does."""

    async def __call__(self, session: AsyncSession, items: Sequence[str]) -> list[bool]:
        self.batches.append(len(items))
        rows = [
            {"event_id": item, "source": "test", "event_type": "t", "received_at": self.clock.now()}
            for item in items
        ]
        await session.execute(insert(table_of(TriageInbox)), rows)
        return [True] * len(items)


async def test_a_batch_failed_by_a_key_taken_is_written_again_with_its_keys_told_apart(
    resources: Resources, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    plain, apart = PlainInboxWriter(clock), InboxWriter(clock)
    intake = GroupCommit[str](
        resources.sessionmaker, plain, max_batch=64, name="test", keys_apart=apart
    )
    assert await intake.submit("taken") is True
    with caplog.at_level(logging.INFO, logger="reach.db.group_commit"):
        answers = await asyncio.gather(*(intake.submit(item) for item in ["a", "taken", "b"]))
    # Only the item whose key was taken goes back to its caller.
    assert answers == [True, False, True]
    assert plain.batches == [1, 3]
    assert apart.batches == [3]
    assert await stored_ids(resources) == ["a", "b", "taken"]
    assert [r.levelno for r in caplog.records] == [logging.INFO]


async def test_a_batch_failed_by_another_integrity_error_is_not_written_again(
    resources: Resources, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    apart = InboxWriter(clock)

    async def a_null_where_none_may_be(session: AsyncSession, items: Sequence[str]) -> list[bool]:
        row = {"event_id": None, "source": "test", "event_type": "t", "received_at": clock.now()}
        await session.execute(insert(table_of(TriageInbox)), [row])
        return [True] * len(items)

    intake = GroupCommit[str](
        resources.sessionmaker, a_null_where_none_may_be, max_batch=64, name="test",
        keys_apart=apart,
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="reach.db.group_commit"):
        answers = await asyncio.gather(*(intake.submit(item) for item in ["a", "b"]))
    assert answers == [False, False]
    assert apart.batches == []
    assert await stored_ids(resources) == []
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
