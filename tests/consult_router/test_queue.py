"""The queue the dashboards see: what a newer snapshot changes, most urgent first. What
moves on a case's line (status, holders, escalation, time waited) is in
`test_queue_lines.py`, with what each read sends to the database."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.consult_router import queue_lines
from services.shared.clock import ManualClock
from tests.consult_router.conftest import Desk, snapshot


class TestTheQueue:
    async def test_shows_a_newer_snapshot_of_a_case(self, desk: Desk, clock: ManualClock) -> None:
        case = snapshot(clock, priority=3, score=3)
        await desk.send_case(case)
        [first] = await desk.queue()
        assert (first["priority"], first["news2"]["score"], first["risk_flags"]) == (3, 3, [])
        newer = {**snapshot(clock, priority=1, score=7, risk_flags=["low_spo2"]), "version": 2}
        await desk.send_case({**newer, "id": case["id"], "reference": case["reference"]})
        [updated] = await desk.queue()
        assert (updated["priority"], updated["news2"]["score"], updated["risk_flags"]) == (
            1,
            7,
            ["low_spo2"],
        )

    async def test_most_urgent_first_then_the_longest_waiting(
        self, desk: Desk, clock: ManualClock
    ) -> None:
        older = snapshot(clock, priority=3, created_at=clock.now() - timedelta(minutes=5))
        urgent = snapshot(clock, priority=1)
        newer = snapshot(clock, priority=3)
        await desk.send_case(newer, urgent, older)
        assert [item["case_id"] for item in await desk.queue()] == [
            urgent["id"],
            older["id"],
            newer["id"],
        ]

    async def test_a_backlog_beyond_the_limit_never_hides_an_urgent_case(
        self, desk: Desk, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(queue_lines, "QUEUE_LIMIT", 2)
        # Sent newest first, so that the order they were written in is not their order.
        backlog = [
            snapshot(clock, priority=3, created_at=clock.now() - timedelta(minutes=minutes))
            for minutes in (1, 2, 3)
        ]
        await desk.send_case(*backlog)
        urgent = snapshot(clock, priority=1)
        await desk.send_case(urgent)
        assert [item["case_id"] for item in await desk.queue()] == [
            urgent["id"],
            backlog[-1]["id"],
        ]
