"""Routing on arrival: a new case is offered in the transaction that records it, by the
same pass a wake-up runs; what that pass reads and writes, and what a failure in it leaves."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from fastapi import FastAPI
from sqlalchemy import event, select, text

from services.consult_router import outbound, routing
from services.consult_router.context import WORK_CHANNEL
from services.consult_router.engine import RoutingEngine
from services.shared.clock import ManualClock
from services.shared.db.models import ConsultCase
from services.shared.db.session import RetryWithSavepoints, unit_of_work, without_savepoints
from services.shared.resources import Resources
from tests.consult_router.conftest import (
    Desk,
    case_state,
    kinds,
    offered_case,
    reads_the_queue,
    snapshot,
    statuses_told,
)
from tests.support import statements_sent


class TestOfferedOnArrival:
    """A new case is routed in the transaction that records it, by the same pass a
    wake-up runs, without waiting for the routing loop."""

    async def test_a_new_case_is_offered_in_the_transaction_that_records_it(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        await desk.consultant("dr-a", ["frailty"])
        case = snapshot(clock)
        # Each transaction's statements, so that the one that wrote the case is held to
        # the offer. Counting every transaction begun meanwhile was fragile: in a run
        # beside another test process, a second one once began on PostgreSQL (never seen
        # again with the statements traced), and how many began is not what this means.
        transactions: list[list[str]] = []
        open_on: dict[int, list[str]] = {}

        def began(connection: object) -> None:
            statements: list[str] = []
            open_on[id(connection)] = statements
            transactions.append(statements)

        def sent(connection: object, _cursor: object, statement: str, *_rest: object) -> None:
            if id(connection) in open_on:
                open_on[id(connection)].append(statement)

        sync_engine = resources.engine.sync_engine
        event.listen(sync_engine, "begin", began)
        event.listen(sync_engine, "before_cursor_execute", sent)
        try:
            await desk.send_case(case)  # no routing pass runs in this test
        finally:
            event.remove(sync_engine, "begin", began)
            event.remove(sync_engine, "before_cursor_execute", sent)

        def wrote(statements: list[str], table: str) -> bool:
            return any(re.search(rf"INSERT INTO {table}\b", sql) for sql in statements)

        [recorded] = [t for t in transactions if wrote(t, "consult_case")]
        assert wrote(recorded, "consult_offer")
        assert kinds(await desk.log("dr-a")) == ["offer"]
        assert offered_case(await desk.log("dr-a")) == case["id"]

    async def test_an_arrival_is_offered_as_written_without_reading_it_back(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        """Written by the transaction routing it, the case is nobody else's to lock or to
        have offered: neither it nor its offers are read again."""
        await desk.consultant("dr-a", ["frailty"])
        case = snapshot(clock, risk_flags=["cannot_walk"])

        def reads_one_case_or_its_offers(statement: str) -> bool:
            # A case's id compared with a value: the queue's read, which joins the offers
            # to every open case (`consult_offer.case_id = consult_case.id`), is not one.
            one_case = re.search(
                r"(consult_case\.id|consult_offer\.case_id) = (?!consult_)", statement
            )
            return statement.startswith("SELECT") and one_case is not None

        with statements_sent(resources.engine, reads_one_case_or_its_offers) as rereads:
            await desk.send_case(case)
        assert rereads == []
        assert offered_case(await desk.log("dr-a")) == case["id"]
        [offer] = await desk.offers("dr-a")
        assert offer["case"]["risk_flags"] == ["cannot_walk"]  # the whole case, as written

    async def test_an_arrival_ended_by_its_own_batch_is_not_offered(
        self, desk: Desk, clock: ManualClock
    ) -> None:
        await desk.consultant("dr-a", ["frailty"])
        case = snapshot(clock)
        cancelled = {**case, "version": 2, "status": "cancelled"}
        assert await desk.send_case(case, cancelled) == ["accepted", "accepted"]
        assert await desk.log("dr-a") == []

    async def test_an_arrival_never_goes_ahead_of_a_more_urgent_case_waiting(
        self, desk: Desk, clock: ManualClock
    ) -> None:
        await desk.consultant("dr-a", ["frailty"], available=False)
        urgent = snapshot(clock, priority=2)
        await desk.send_case(urgent)  # nobody free: it waits
        await desk.status("dr-a", "available")  # the routing loop has not run since
        await desk.send_case(snapshot(clock, priority=4))
        assert kinds(await desk.log("dr-a")) == ["offer"]
        assert offered_case(await desk.log("dr-a")) == urgent["id"]

    async def test_an_arrival_passes_over_whoever_is_being_asked_about_a_case(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        """The view read on arrival knows who holds an open offer, and which cases await
        an answer: the new case goes to the one free, and the case on offer is left to its
        consultant without being locked and read again."""
        for name in ("dr-a", "dr-b"):
            await desk.consultant(name, ["frailty"])
        first = snapshot(clock)
        await desk.send_case(first)
        assert offered_case(await desk.log("dr-a")) == first["id"]

        def routes_one_case(statement: str) -> bool:  # the read that locks a case to route
            reads = statement.startswith("SELECT")
            return (
                reads and re.search(r"WHERE consult_case\.id = (?!consult_)", statement) is not None
            )

        second = snapshot(clock)
        with statements_sent(resources.engine, routes_one_case) as reread:
            await desk.send_case(second)
        assert reread == []
        assert kinds(await desk.log("dr-a")) == ["offer"]
        assert offered_case(await desk.log("dr-b")) == second["id"]

    async def test_with_nobody_free_an_arrival_does_not_read_the_queue(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        await desk.consultant("dr-a", ["frailty"], available=False)
        for _ in range(3):
            await desk.send_case(snapshot(clock))

        with statements_sent(resources.engine, reads_the_queue) as queue_reads:
            await desk.send_case(snapshot(clock))
        assert queue_reads == []
        await desk.status("dr-a", "available")
        with statements_sent(resources.engine, reads_the_queue) as queue_reads:
            await desk.send_case(snapshot(clock))
        assert len(queue_reads) == 1  # someone free: the whole queue, in order
        assert kinds(await desk.log("dr-a")) == ["offer"]

    async def test_an_arrival_reads_no_queue_when_every_other_case_awaits_an_answer(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        for name in ("dr-a", "dr-b"):
            await desk.consultant(name, ["frailty"])
        first = snapshot(clock)
        await desk.send_case(first)  # offered to dr-a, whose answer alone moves it on
        second = snapshot(clock)
        with statements_sent(resources.engine, reads_the_queue) as queue_reads:
            await desk.send_case(second)
        assert queue_reads == []
        assert offered_case(await desk.log("dr-b")) == second["id"]
        assert kinds(await desk.log("dr-a")) == ["offer"]

    async def test_an_arrivals_move_to_offered_goes_with_its_first_offer(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        """On PostgreSQL the statement that makes a case's first offer also moves it to
        offered: no UPDATE of the case of its own. The crew is told `offered` once, at
        router version 1, either way."""
        await desk.consultant("dr-a", ["frailty"])
        case = snapshot(clock)
        with statements_sent(resources.engine, lambda sql: "UPDATE consult_case" in sql) as sent:
            await desk.send_case(case)
        [update] = sent
        on_postgres = resources.engine.dialect.name == "postgresql"
        assert ("INSERT INTO consult_offer" in update) is on_postgres
        assert offered_case(await desk.log("dr-a")) == case["id"]
        assert await case_state(resources, case["id"]) == ("offered", 1)
        assert await statuses_told(resources, case["id"]) == [("consult.offered", 1)]

    async def test_a_broadcast_case_moves_to_offered_once(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        for name in ("dr-f", "dr-g"):
            await desk.consultant(name, ["emergency_medicine"])
        case = snapshot(clock, specialty="stroke")  # nobody on call: the fallback, at once
        await desk.send_case(case)
        assert offered_case(await desk.log("dr-f")) == case["id"]
        assert offered_case(await desk.log("dr-g")) == case["id"]
        assert await case_state(resources, case["id"]) == ("offered", 1)
        assert await statuses_told(resources, case["id"]) == [("consult.offered", 1)]

    async def test_arrivals_routed_without_the_queue_go_most_urgent_first(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        for name in ("dr-a", "dr-b"):
            await desk.consultant(name, ["frailty"])
        await desk.send_case(snapshot(clock))  # offered to dr-a: it awaits their answer
        # One batch, the less urgent first in it and in id order (new cases are written,
        # and handed to routing, in id order).
        later = snapshot(clock, priority=4, case_id=f"00000000-{uuid.uuid4().hex[:4]}-0000")
        urgent = snapshot(clock, priority=2, case_id=f"ffffffff-{uuid.uuid4().hex[:4]}-0000")
        with statements_sent(resources.engine, reads_the_queue) as queue_reads:
            await desk.send_case(later, urgent)
        assert queue_reads == []
        assert offered_case(await desk.log("dr-b")) == urgent["id"]

    async def test_an_arrival_reads_the_queue_when_a_broadcast_case_could_take_someone(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        """A broadcast case on offer still moves when someone newly free can join in: the
        older one goes to them first, not the arrival."""
        await desk.consultant("dr-f", ["emergency_medicine"])
        await desk.consultant("dr-g", ["emergency_medicine"], available=False)
        nobody_on_call = snapshot(clock, specialty="stroke")
        await desk.send_case(nobody_on_call)  # broadcast to the fallback: dr-f is asked
        assert offered_case(await desk.log("dr-f")) == nobody_on_call["id"]
        await desk.status("dr-g", "available")  # the routing loop has not run since
        clock.advance(timedelta(seconds=1))  # the arrival is the newer, no more urgent
        with statements_sent(resources.engine, reads_the_queue) as queue_reads:
            await desk.send_case(snapshot(clock, specialty="emergency_medicine"))
        assert len(queue_reads) == 1
        assert offered_case(await desk.log("dr-g")) == nobody_on_call["id"]
        assert kinds(await desk.log("dr-g")) == ["offer"]

    async def test_an_arrival_reads_the_queue_when_an_offered_case_has_no_open_offer(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        """An offer closed where the case was not routed again at once (the routing loop
        is woken to do it) leaves the case offered with nobody asked: the next arrival's
        pass routes it first."""
        for name in ("dr-a", "dr-b"):
            await desk.consultant(name, ["frailty"])
        first = snapshot(clock)
        await desk.send_case(first)
        async with unit_of_work(resources.sessionmaker) as session:
            await session.execute(
                text("UPDATE consult_offer SET state = 'withdrawn' WHERE case_id = :case_id"),
                {"case_id": first["id"]},
            )
        clock.advance(timedelta(seconds=1))
        second = snapshot(clock)
        with statements_sent(resources.engine, reads_the_queue) as queue_reads:
            await desk.send_case(second)
        assert len(queue_reads) == 1
        assert offered_case(await desk.log("dr-b")) == first["id"]  # dr-a was tried
        assert offered_case(await desk.log("dr-a")) == second["id"]

    async def test_if_routing_on_arrival_fails_the_case_is_kept_for_the_loop(
        self, desk: Desk, engine: RoutingEngine, clock: ManualClock, resources: Resources,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:  # fmt: skip
        await desk.consultant("dr-a", ["frailty"])

        async def broken(*_args: object, **_kwargs: object) -> None:
            raise RuntimeError("a defect in routing")

        monkeypatch.setattr(routing.RoutingView, "load", broken)
        case = snapshot(clock)
        with resources.notifier.subscribe(WORK_CHANNEL) as work:
            assert await desk.send_case(case) == ["accepted"]
            assert await work.wait(timeout=5)  # the loop is woken to route it
        assert await desk.log("dr-a") == []
        monkeypatch.undo()
        await engine.route_changes()
        assert offered_case(await desk.log("dr-a")) == case["id"]

    async def test_a_failure_after_the_move_leaves_the_case_as_the_database_has_it(
        self, desk: Desk, router_app: FastAPI, clock: ManualClock, resources: Resources,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:  # fmt: skip
        """Routing on arrival fails after the case's first offer (which, on PostgreSQL,
        moved it to offered): the savepoint undoes the offer and the move, and the
        session's object reads queued again, as the row does, not what was undone."""
        await desk.consultant("dr-a", ["frailty"])

        async def broken(*_args: object, **_kwargs: object) -> None:
            raise RuntimeError("a defect in announcing")

        monkeypatch.setattr(outbound, "announce_status", broken)
        case = snapshot(clock)
        raw = {
            "id": uuid.uuid4().hex, "type": "case.submitted", "source": "triage_api",
            "occurred_at": clock.now().isoformat(), "subject_id": case["id"], "data": case,
        }  # fmt: skip
        async with unit_of_work(resources.sessionmaker) as session:
            await router_app.state.local_receiver(session, [raw])  # with savepoints
            held = await session.get(ConsultCase, case["id"])
            assert held is not None
            assert (held.status, held.router_version) == ("queued", 0)
        assert await case_state(resources, case["id"]) == ("queued", 0)
        assert await desk.log("dr-a") == []

    async def test_without_savepoints_a_routing_failure_asks_for_them(
        self, desk: Desk, router_app: FastAPI, clock: ManualClock, resources: Resources,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:  # fmt: skip
        """Handed over in a transaction without savepoints (the embedded default's outbox
        delivery), a failure in routing cannot be undone alone: the whole hand-over is
        asked for again with them, and the case is recorded then (as above)."""
        await desk.consultant("dr-a", ["frailty"])

        async def broken(*_args: object, **_kwargs: object) -> None:
            raise RuntimeError("a defect in routing")

        monkeypatch.setattr(routing.RoutingView, "load", broken)
        case = snapshot(clock)
        raw = {
            "id": uuid.uuid4().hex, "type": "case.submitted", "source": "triage_api",
            "occurred_at": clock.now().isoformat(), "subject_id": case["id"], "data": case,
        }  # fmt: skip

        async def hand_over(*, savepoints: bool) -> list[str]:
            async with unit_of_work(resources.sessionmaker) as session:
                if not savepoints:
                    without_savepoints(session)
                result = await router_app.state.local_receiver(session, [raw])
            return [outcome.outcome for outcome in result.results]

        async def status() -> str | None:
            async with unit_of_work(resources.sessionmaker) as session:
                return await session.scalar(
                    select(ConsultCase.status).where(ConsultCase.id == case["id"])
                )

        with pytest.raises(RetryWithSavepoints):
            await hand_over(savepoints=False)
        assert await status() is None  # nothing of it was kept
        assert await hand_over(savepoints=True) == ["accepted"]
        assert await status() == "queued"
        assert await desk.log("dr-a") == []
