"""The queue the dashboards see: what moves on a case's line (status, who holds its
offers, escalation, time waited) and what a newer snapshot changes, most urgent first."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from services.consult_router.engine import RoutingEngine
from services.shared.clock import ManualClock
from tests.consult_router.conftest import Desk, snapshot
from tests.support import token

COORDINATOR = {"Authorization": f"Bearer {token('coordinator', 'ops')}"}


async def queue(desk: Desk) -> list[dict[str, Any]]:
    response = await desk.http.get("/v1/queue", headers=COORDINATOR)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


class TestTheQueue:
    async def test_shows_a_newer_snapshot_of_a_case(self, desk: Desk, clock: ManualClock) -> None:
        case = snapshot(clock, priority=3, score=3)
        await desk.send_case(case)
        [first] = await queue(desk)
        assert (first["priority"], first["news2"]["score"], first["risk_flags"]) == (3, 3, [])
        newer = {**snapshot(clock, priority=1, score=7, risk_flags=["low_spo2"]), "version": 2}
        await desk.send_case({**newer, "id": case["id"], "reference": case["reference"]})
        [updated] = await queue(desk)
        assert (updated["priority"], updated["news2"]["score"], updated["risk_flags"]) == (
            1,
            7,
            ["low_spo2"],
        )

    async def test_shows_who_holds_it_its_escalation_and_its_wait(
        self, desk: Desk, engine: RoutingEngine, clock: ManualClock
    ) -> None:
        await desk.consultant("dr-a", ["frailty"])
        await desk.status("dr-a", "busy")
        case = snapshot(clock)
        await desk.send_case(case)
        [waiting] = await queue(desk)
        assert (waiting["status"], waiting["held_by"], waiting["escalated"]) == (
            "queued",
            [],
            False,
        )
        assert waiting["waiting_seconds"] == 0.0
        await desk.status("dr-a", "available")
        await engine.run_once()  # offered to dr-a
        clock.advance(timedelta(minutes=11))  # past the first escalation
        await engine.run_once()
        [offered] = await queue(desk)
        assert (offered["status"], offered["held_by"], offered["escalated"]) == (
            "offered",
            ["dr-a"],
            True,
        )
        assert offered["waiting_seconds"] == 660.0

    async def test_most_urgent_first_then_the_longest_waiting(
        self, desk: Desk, clock: ManualClock
    ) -> None:
        older = snapshot(clock, priority=3, created_at=clock.now() - timedelta(minutes=5))
        urgent = snapshot(clock, priority=1)
        newer = snapshot(clock, priority=3)
        await desk.send_case(newer, urgent, older)
        assert [item["case_id"] for item in await queue(desk)] == [
            urgent["id"],
            older["id"],
            newer["id"],
        ]
