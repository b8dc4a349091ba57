"""A submitted case is written without first looking for it; a repeated submission, or
one racing another delivery of the same case, still writes it once and routes it once."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from services.consult_router.cases import apply_snapshots
from services.shared.clock import ManualClock
from services.shared.db.models import ConsultCase
from services.shared.db.session import unit_of_work
from services.shared.resources import Resources
from services.shared.schemas.events import Event
from tests.consult_router.conftest import Desk, snapshot
from tests.support import eventually, statements_sent, waiting_on_a_lock


def event(clock: ManualClock, kind: str, data: dict[str, Any]) -> Event:
    return Event(
        id=uuid.uuid4().hex, type=kind, source="triage_api", occurred_at=clock.now(),
        subject_id=data["id"], data=data,
    )  # fmt: skip


def reads_a_case_by_id(statement: str) -> bool:
    """The batch's locking read of the cases it names (not the routing queue's read)."""
    return statement.startswith("SELECT") and "consult_case.id IN" in statement


async def rows_of(resources: Resources, case_id: str) -> int:
    async with unit_of_work(resources.sessionmaker) as session:
        count = await session.scalar(
            select(func.count()).select_from(ConsultCase).where(ConsultCase.id == case_id)
        )
        return int(count or 0)


class TestWrittenWithoutLooking:
    async def test_a_submission_writes_its_case_without_reading_for_it(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        await desk.consultant("dr-a", ["frailty"])
        case = snapshot(clock)
        with statements_sent(resources.engine, reads_a_case_by_id) as reads:
            assert await desk.send_case(case) == ["accepted"]
        assert reads == []
        [offer] = await desk.offers("dr-a")
        assert offer["case"]["id"] == case["id"]

    async def test_an_update_reads_its_case_under_a_lock(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        case = snapshot(clock)
        await desk.send_case(case)
        with statements_sent(resources.engine, reads_a_case_by_id) as reads:
            await desk.send_case({**case, "version": 2, "priority": 1})
        assert len(reads) == 1
        assert "FOR UPDATE" in reads[0] or resources.engine.dialect.name == "sqlite"

    async def test_a_repeated_submission_changes_nothing_and_is_not_taken_for_new(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        await desk.consultant("dr-a", ["frailty"], available=False)
        case = snapshot(clock, priority=3)
        await desk.send_case(case)
        await desk.send_case({**case, "version": 2, "priority": 1})
        await desk.status("dr-a", "available")  # no routing pass has run since
        # The first submission again, with a new case beside it in the same batch.
        other = snapshot(clock, priority=3)
        assert await desk.send_case(case, other) == ["accepted", "accepted"]
        assert await rows_of(resources, case["id"]) == 1
        async with unit_of_work(resources.sessionmaker) as session:
            kept = await session.get(ConsultCase, case["id"])
            assert kept is not None
            assert (kept.version, kept.priority) == (2, 1)
        # The waiting case goes first, as it stands: not as the repeat describes it.
        [offer] = await desk.offers("dr-a")
        assert (offer["case"]["id"], offer["case"]["priority"]) == (case["id"], 1)

    async def test_an_update_heard_before_its_submission_opens_the_case(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        await desk.consultant("dr-a", ["frailty"])
        case = snapshot(clock)
        updated = {**case, "version": 2, "priority": 1}
        assert await desk.send_case(updated, case) == ["accepted", "accepted"]
        assert await rows_of(resources, case["id"]) == 1
        [offer] = await desk.offers("dr-a")
        assert offer["case"]["id"] == case["id"]
        assert offer["case"]["priority"] == 1

    async def test_a_batch_mixing_new_known_and_ended_cases_is_applied_in_order(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        """New cases written first, a known one read under its lock, each event applied in
        turn: the known case's update lands, a case opened and cancelled within the batch
        is never offered, and the other new case is."""
        await desk.consultant("dr-a", ["frailty"], available=False)
        known = snapshot(clock, priority=4)
        await desk.send_case(known)
        await desk.status("dr-a", "available")  # no routing pass has run since
        ended, fresh = snapshot(clock, priority=1), snapshot(clock, priority=2)
        outcomes = await desk.send_case(
            {**known, "version": 2, "priority": 3},
            ended,
            {**ended, "version": 2, "status": "cancelled"},
            fresh,
        )
        assert outcomes == ["accepted"] * 4
        async with unit_of_work(resources.sessionmaker) as session:
            rows = {
                case.id: case for case in (await session.execute(select(ConsultCase))).scalars()
            }
        assert (rows[known["id"]].version, rows[known["id"]].priority) == (2, 3)
        assert rows[ended["id"]].status == "cancelled"
        # The most urgent case still open is the fresh one (priority 2, then the known 3).
        [offer] = await desk.offers("dr-a")
        assert offer["case"]["id"] == fresh["id"]


class TestRacingDeliveries:
    async def test_two_deliveries_of_one_submission_at_once_write_and_open_it_once(
        self, router_app: FastAPI, clock: ManualClock, resources: Resources
    ) -> None:
        """The second waits on the first's uncommitted row, then finds the case there."""
        if resources.engine.dialect.name == "sqlite":
            pytest.skip("SQLite has one writer: two deliveries never overlap")
        ctx = router_app.state.router
        case = snapshot(clock)
        first_wrote = asyncio.Event()
        release_first = asyncio.Event()

        async def first() -> list[str]:
            async with unit_of_work(resources.sessionmaker) as session:
                opened = await apply_snapshots(
                    session, ctx=ctx, events=[event(clock, "case.submitted", case)]
                )
                first_wrote.set()
                await release_first.wait()
                return list(opened)

        async def second() -> list[str]:
            await first_wrote.wait()
            async with unit_of_work(resources.sessionmaker) as session:
                opened = await apply_snapshots(
                    session, ctx=ctx, events=[event(clock, "case.submitted", case)]
                )
                return list(opened)

        first_task, second_task = asyncio.create_task(first()), asyncio.create_task(second())
        await first_wrote.wait()

        await eventually(lambda: waiting_on_a_lock(resources.engine), timeout=10)
        assert not second_task.done()
        release_first.set()
        assert await asyncio.wait_for(first_task, 10) == [case["id"]]
        assert await asyncio.wait_for(second_task, 10) == []
        assert await rows_of(resources, case["id"]) == 1
