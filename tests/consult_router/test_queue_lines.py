"""The queue the dashboards see, read at every change: each case's fixed line read once for
each version of the case, what moves (status, holders, escalation, time waited) read every
time, and each line the JSON form the schema gives."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from fastapi import FastAPI

from services.consult_router.context import RouterContext
from services.consult_router.engine import RoutingEngine
from services.consult_router.queue_lines import QueueLines, encode_line, fixed_head
from services.consult_router.repository.cases import FixedLine
from services.consult_router.schemas import QueueItem
from services.shared.clock import ManualClock
from services.shared.resources import Resources
from tests.consult_router.conftest import Desk, snapshot
from tests.support import statements_sent, token

COORDINATOR = {"Authorization": f"Bearer {token('coordinator', 'ops')}"}


def reads_the_document(statement: str) -> bool:
    """A read that picks the score and flags out of a case's clinical document."""
    return statement.lstrip().startswith("SELECT") and "snapshot" in statement


async def queue(desk: Desk) -> list[dict[str, Any]]:
    response = await desk.http.get("/v1/queue", headers=COORDINATOR)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def lines_kept(router_app: FastAPI) -> QueueLines:
    ctx: RouterContext = router_app.state.router
    return ctx.queue_lines


class TestALine:
    def test_is_the_items_json_form_whatever_it_holds(self) -> None:
        """Offsets, nested scores, holders, escalation, a float's last digit and text
        beyond ASCII: what a dashboard parses is what `QueueItem` says."""
        lines = [
            FixedLine(
                case_id="case-1",
                version=3,
                reference="REF-Ærø-1",
                priority=1,
                specialty="frailty",
                call_category="C2",
                news2={"score": 7, "band": "high", "components": {"spo2": 3}},
                risk_flags=["anticoagulated", "falls"],
                created_at=datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=1))),
            ),
            FixedLine(
                case_id="case-2",
                version=1,
                reference='R-"2"\\',
                priority=3,
                specialty="mental_health",
                call_category="C3",
                news2=None,
                risk_flags=None,
                created_at=datetime(2026, 12, 5, 9, 0, 0, 250000, tzinfo=UTC),
            ),
        ]
        moving: list[dict[str, Any]] = [
            {"status": "offered", "waiting_seconds": 0.30000000000000004,
             "held_by": ["dr-1", "dr-é"], "escalated": True},
            {"status": "queued", "waiting_seconds": 0.0, "held_by": [], "escalated": False},
        ]  # fmt: skip
        for line, moves in zip(lines, moving, strict=True):
            encoded = encode_line(fixed_head(line), **moves)
            item = QueueItem(
                case_id=line.case_id,
                reference=line.reference,
                priority=line.priority,
                specialty=line.specialty,
                call_category=line.call_category,
                news2=line.news2,
                risk_flags=line.risk_flags or [],
                waiting_since=line.created_at,
                **moves,
            )
            assert json.loads(encoded) == item.model_dump(mode="json")


class TestTheQueue:
    async def test_reads_a_cases_document_once_until_a_newer_snapshot(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        case = snapshot(clock, priority=3, score=3)
        await desk.send_case(case)
        with statements_sent(resources.engine, reads_the_document) as reads:
            [first] = await queue(desk)
            assert (first["priority"], first["news2"]["score"], first["risk_flags"]) == (3, 3, [])
            assert await queue(desk) == [first]
        assert len(reads) == 1  # the second read kept the first's line
        newer = {**snapshot(clock, priority=1, score=7, risk_flags=["low_spo2"]), "version": 2}
        await desk.send_case({**newer, "id": case["id"], "reference": case["reference"]})
        with statements_sent(resources.engine, reads_the_document) as reads:
            [updated] = await queue(desk)
        assert len(reads) == 1
        assert (updated["priority"], updated["news2"]["score"], updated["risk_flags"]) == (
            1,
            7,
            ["low_spo2"],
        )

    async def test_shows_what_moved_on_a_kept_line(
        self, desk: Desk, engine: RoutingEngine, clock: ManualClock, resources: Resources
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
        with statements_sent(resources.engine, reads_the_document) as reads:
            [offered] = await queue(desk)
        assert reads == []
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

    async def test_forgets_the_lines_of_cases_that_left_it(
        self, desk: Desk, clock: ManualClock, router_app: FastAPI
    ) -> None:
        staying, leaving = snapshot(clock), snapshot(clock)
        await desk.send_case(staying, leaving)
        assert len(await queue(desk)) == 2
        assert len(lines_kept(router_app)) == 2
        await desk.send_case({**leaving, "version": 2, "status": "cancelled"})
        assert [item["case_id"] for item in await queue(desk)] == [staying["id"]]
        assert len(lines_kept(router_app)) == 1
