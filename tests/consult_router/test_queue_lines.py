"""The queue the dashboards see, read at every change: each case's fixed line read once for
each version of the case (with the marks when the case is new, apart for a newer
snapshot or a case received out of turn), what moves (status, holders, escalation, time
waited) read every time, and each line the JSON form the schema gives."""

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
from tests.support import statements_sent


def reads_queue(statement: str) -> bool:
    """A read of the queue's cases: their marks, or fixed lines read apart."""
    return statement.lstrip().startswith("SELECT") and "snapshot" in statement


def reads_lines_apart(statement: str) -> bool:
    """A read of fixed lines apart from the marks: every line it names picked out of its
    case's clinical document (the marks' statement picks only new cases' out)."""
    return reads_queue(statement) and "CASE WHEN" not in statement.upper()


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
                received_at=datetime(2026, 3, 29, 0, 31, tzinfo=UTC),
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
                received_at=datetime(2026, 12, 5, 9, 0, 1, tzinfo=UTC),
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
    async def test_takes_a_new_cases_line_with_the_marks(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        """A case received since the newest one kept (most changes bring one) costs the
        read no statement of its own, and its line is what its snapshot says."""
        first = snapshot(clock, priority=3, score=3)
        await desk.send_case(first)
        await desk.queue()
        clock.advance(timedelta(minutes=1))
        second = snapshot(clock, priority=1, score=7, risk_flags=["low_spo2"])
        await desk.send_case(second)
        with statements_sent(resources.engine, reads_queue) as reads:
            items = await desk.queue()
        assert len(reads) == 1  # the marks, with the new case's line
        shown = [(i["case_id"], i["priority"], i["news2"]["score"], i["risk_flags"]) for i in items]
        assert shown == [(second["id"], 1, 7, ["low_spo2"]), (first["id"], 3, 3, [])]

    async def test_reads_a_kept_cases_newer_snapshot_apart(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        case = snapshot(clock, priority=3, score=3)
        await desk.send_case(case)
        clock.advance(timedelta(minutes=1))
        await desk.send_case(snapshot(clock, priority=3))  # the newest kept, after the read
        first, _newest = await desk.queue()
        assert first["case_id"] == case["id"]
        clock.advance(timedelta(minutes=1))
        with statements_sent(resources.engine, reads_lines_apart) as apart:
            assert (await desk.queue())[0] == {**first, "waiting_seconds": 120.0}
        assert apart == []  # kept
        newer = {**snapshot(clock, priority=1, score=7, risk_flags=["low_spo2"]), "version": 2}
        await desk.send_case({**newer, "id": case["id"], "reference": case["reference"]})
        with statements_sent(resources.engine, reads_lines_apart) as apart:
            updated, _newest = await desk.queue()
        assert len(apart) == 1
        assert (updated["case_id"], updated["priority"], updated["news2"]["score"]) == (
            case["id"],
            1,
            7,
        )
        assert updated["risk_flags"] == ["low_spo2"]
        with statements_sent(resources.engine, reads_lines_apart) as apart:
            assert (await desk.queue())[0] == updated
        assert apart == []  # the newer version kept in turn

    async def test_takes_a_case_committed_just_out_of_turn_with_the_marks(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        """A case received a moment before the newest one kept, but visible only after it
        (its commit took longer): within the overlap, its line still comes with the
        marks, no statement of its own."""
        late = snapshot(clock, priority=2, score=5)
        newest = snapshot(clock, priority=3)
        await desk.send_case(newest)
        assert [item["case_id"] for item in await desk.queue()] == [newest["id"]]
        now = clock.now()
        clock.set(now - timedelta(seconds=0.3))  # received before the newest, seen after
        await desk.send_case(late)
        clock.set(now)
        with statements_sent(resources.engine, reads_lines_apart) as apart:
            items = await desk.queue()
        assert apart == []
        assert [(item["case_id"], item["priority"], item["news2"]["score"]) for item in items] == [
            (late["id"], 2, 5),
            (newest["id"], 3, newest["news2"]["score"]),
        ]

    async def test_reads_a_case_received_out_of_turn_apart(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        """A case that becomes visible after a newer one was kept, received earlier than
        the overlap allows (another replica's clock behind): read apart, never missed."""
        late = snapshot(clock, priority=2, score=5)
        clock.advance(timedelta(minutes=5))
        newest = snapshot(clock, priority=3)
        await desk.send_case(newest)
        assert [item["case_id"] for item in await desk.queue()] == [newest["id"]]
        now = clock.now()
        clock.set(now - timedelta(minutes=4))  # the late case is received "earlier"
        await desk.send_case(late)
        clock.set(now)
        with statements_sent(resources.engine, reads_lines_apart) as apart:
            items = await desk.queue()
        assert len(apart) == 1
        assert [(item["case_id"], item["priority"], item["news2"]["score"]) for item in items] == [
            (late["id"], 2, 5),
            (newest["id"], 3, newest["news2"]["score"]),
        ]

    async def test_follows_a_clock_ahead_no_further_than_its_own(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        """A case received on a clock ahead of the reader's (another replica's) does not
        send every case received after it down the statement of their own."""
        now = clock.now()
        clock.set(now + timedelta(minutes=10))
        ahead = snapshot(clock, priority=3, created_at=now)
        await desk.send_case(ahead)
        clock.set(now)
        assert [item["case_id"] for item in await desk.queue()] == [ahead["id"]]
        clock.advance(timedelta(minutes=1))
        new = snapshot(clock, priority=1)
        await desk.send_case(new)
        with statements_sent(resources.engine, reads_lines_apart) as apart:
            items = await desk.queue()
        assert apart == []  # the new case's line came with the marks
        assert [item["case_id"] for item in items] == [new["id"], ahead["id"]]

    async def test_shows_what_moved_on_a_kept_line(
        self, desk: Desk, engine: RoutingEngine, clock: ManualClock, resources: Resources
    ) -> None:
        await desk.consultant("dr-a", ["frailty"])
        await desk.status("dr-a", "busy")
        case = snapshot(clock)
        await desk.send_case(case)
        [waiting] = await desk.queue()
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
        with statements_sent(resources.engine, reads_lines_apart) as apart:
            [offered] = await desk.queue()
        assert apart == []
        assert (offered["status"], offered["held_by"], offered["escalated"]) == (
            "offered",
            ["dr-a"],
            True,
        )
        assert offered["waiting_seconds"] == 660.0

    async def test_forgets_the_lines_of_cases_that_left_it(
        self, desk: Desk, clock: ManualClock, router_app: FastAPI
    ) -> None:
        staying, leaving = snapshot(clock), snapshot(clock)
        await desk.send_case(staying, leaving)
        assert len(await desk.queue()) == 2
        assert len(lines_kept(router_app)) == 2
        await desk.send_case({**leaving, "version": 2, "status": "cancelled"})
        assert [item["case_id"] for item in await desk.queue()] == [staying["id"]]
        assert len(lines_kept(router_app)) == 1
