"""Routing scenarios in the spirit of GoAlert's smoke tests: a real app, a real
database, the clock jumped forward. Each asserts exactly which consultant got which
offer and when, and that nothing else was sent."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import event, select, text

from services.consult_router import outbound, routing
from services.consult_router.context import WORK_CHANNEL
from services.consult_router.engine import RoutingEngine
from services.consult_router.repository import cases as case_repo
from services.consult_router.repository import rota as rota_repo
from services.shared.clock import ManualClock
from services.shared.db.models import ConsultCase, ConsultOutbox
from services.shared.db.session import RetryWithSavepoints, unit_of_work, without_savepoints
from services.shared.resources import Resources
from tests.consult_router.conftest import Desk, snapshot
from tests.support import FakePeer, statements_sent, token


def kinds(log: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [kind for kind, _ in log]


def reads_the_queue(statement: str) -> bool:
    """The routing queue's read (the open cases, oldest first)."""
    return "FROM consult_case" in statement and "ORDER BY consult_case.created_at" in statement


async def case_state(resources: Resources, case_id: str) -> tuple[str, int]:
    async with unit_of_work(resources.sessionmaker) as session:
        kept = await session.get(ConsultCase, case_id)
        assert kept is not None
        return kept.status, kept.router_version


async def statuses_told(resources: Resources, case_id: str) -> list[tuple[str, int]]:
    """The `consult.*` statuses the router has put in its outbox for the case's crew."""
    async with unit_of_work(resources.sessionmaker) as session:
        rows = await session.execute(
            select(ConsultOutbox.payload)
            .where(
                ConsultOutbox.event_type.like("consult.%"),
                ConsultOutbox.destination == "triage_api",
            )
            .order_by(ConsultOutbox.id)
        )
        return [
            (told["type"], told["data"]["router_version"])
            for told in rows.scalars()
            if told["subject_id"] == case_id
        ]


def offered_case(log: list[tuple[str, dict[str, Any]]], index: int = -1) -> str:
    offers = [payload for kind, payload in log if kind == "offer"]
    case_id: str = offers[index]["case"]["id"]
    return case_id


class TestSequentialOffers:
    async def test_a_decline_moves_the_case_to_the_next_consultant_at_once(
        self, desk: Desk, engine: RoutingEngine, clock: ManualClock
    ) -> None:
        for name in ("dr-a", "dr-b"):
            await desk.consultant(name, ["frailty"])
        case = snapshot(clock)
        await desk.send_case(case)
        await engine.run_once()
        assert kinds(await desk.log("dr-a")) == ["offer"]
        assert await desk.log("dr-b") == []
        [offer] = await desk.offers("dr-a")
        assert offer["case"]["id"] == case["id"]
        assert offer["expires_at"] == (clock.now() + timedelta(seconds=30)).isoformat().replace(
            "+00:00", "Z"
        )

        await desk.decline("dr-a", offer["offer_id"])
        await engine.run_once()
        assert kinds(await desk.log("dr-a")) == ["offer"]  # nothing more for the decliner
        assert kinds(await desk.log("dr-b")) == ["offer"]
        assert offered_case(await desk.log("dr-b")) == case["id"]

    async def test_a_timeout_moves_the_case_on_and_tells_the_first_consultant(
        self, desk: Desk, engine: RoutingEngine, clock: ManualClock
    ) -> None:
        for name in ("dr-a", "dr-b"):
            await desk.consultant(name, ["frailty"])
        await desk.send_case(snapshot(clock))
        await engine.run_once()
        clock.advance(timedelta(seconds=29))
        await engine.run_once()
        assert await desk.log("dr-b") == []  # not yet
        clock.advance(timedelta(seconds=1))
        await engine.run_once()
        log_a = await desk.log("dr-a")
        assert kinds(log_a) == ["offer", "offer_withdrawn"]
        assert log_a[1][1]["reason"] == "expired"
        assert kinds(await desk.log("dr-b")) == ["offer"]

    async def test_fewest_active_consults_then_longest_idle_is_chosen_first(
        self, desk: Desk, engine: RoutingEngine, clock: ManualClock
    ) -> None:
        for name in ("dr-a", "dr-b", "dr-c"):
            await desk.consultant(name, ["frailty"])
        first = snapshot(clock)
        await desk.send_case(first)
        await engine.run_once()
        [offer] = await desk.offers("dr-a")
        assert (await desk.accept("dr-a", offer["offer_id"])).status_code == 200
        clock.advance(timedelta(minutes=1))
        # dr-a is busy (at the consult limit); dr-b and dr-c never took a case: dr-b by id.
        await desk.send_case(snapshot(clock))
        await engine.run_once()
        assert kinds(await desk.log("dr-b")) == ["offer"]
        assert await desk.log("dr-c") == []


class TestExhaustionAndFallback:
    async def test_after_everyone_in_the_specialty_the_case_goes_to_all_at_once(
        self, desk: Desk, engine: RoutingEngine, clock: ManualClock
    ) -> None:
        for name in ("dr-a", "dr-b"):
            await desk.consultant(name, ["frailty"])
        await desk.consultant("dr-em", ["emergency_medicine"])
        await desk.send_case(snapshot(clock))
        await engine.run_once()
        clock.advance(timedelta(seconds=30))
        await engine.run_once()  # dr-a expired, dr-b offered
        clock.advance(timedelta(seconds=30))
        await engine.run_once()  # dr-b expired: everyone tried, so everyone at once
        assert kinds(await desk.log("dr-a")) == ["offer", "offer_withdrawn", "offer"]
        assert kinds(await desk.log("dr-b")) == ["offer", "offer_withdrawn", "offer"]
        assert kinds(await desk.log("dr-em")) == ["offer"]
        broadcast = next(p for k, p in await desk.log("dr-em") if k == "offer")
        assert broadcast["broadcast"] is True

        [winning] = await desk.offers("dr-em")
        assert (await desk.accept("dr-em", winning["offer_id"])).status_code == 200
        for loser in ("dr-a", "dr-b"):
            last_kind, last = (await desk.log(loser))[-1]
            assert (last_kind, last["reason"]) == ("offer_withdrawn", "accepted_elsewhere")

    async def test_nobody_on_call_for_the_specialty_means_the_fallback_at_once(
        self, desk: Desk, engine: RoutingEngine, clock: ManualClock
    ) -> None:
        await desk.consultant("dr-em1", ["emergency_medicine"])
        await desk.consultant("dr-em2", ["emergency_medicine"])
        await desk.consultant("dr-stroke", ["stroke"], on_shift_for=[])  # on the rota, not on shift
        await desk.send_case(snapshot(clock, specialty="stroke"))
        await engine.run_once()
        assert kinds(await desk.log("dr-em1")) == ["offer"]
        assert kinds(await desk.log("dr-em2")) == ["offer"]
        assert await desk.log("dr-stroke") == []

    async def test_a_decliner_is_not_asked_again_at_once_in_a_broadcast(
        self, desk: Desk, engine: RoutingEngine, clock: ManualClock
    ) -> None:
        await desk.consultant("dr-a", ["frailty"])
        await desk.send_case(snapshot(clock))
        await engine.run_once()
        [offer] = await desk.offers("dr-a")
        await desk.decline("dr-a", offer["offer_id"])
        await engine.run_once()
        assert kinds(await desk.log("dr-a")) == ["offer"]
        clock.advance(timedelta(seconds=31))
        await engine.run_once()  # asked again once the cooling-off has passed
        assert kinds(await desk.log("dr-a")) == ["offer", "offer"]


class TestEscalation:
    async def test_a_case_nobody_accepts_escalates_and_is_still_offered(
        self,
        desk: Desk,
        engine: RoutingEngine,
        clock: ManualClock,
        fake_peers: FakePeer,
        resources: Resources,
        router_app: Any,
    ) -> None:
        case = snapshot(clock)
        await desk.send_case(case)
        await engine.run_once()
        clock.advance(timedelta(seconds=119))
        await engine.run_once()
        await router_app.state.outbox_delivery.deliver_due()
        assert fake_peers.of_type("consult.escalated") == []
        clock.advance(timedelta(seconds=1))
        await engine.run_once()
        await router_app.state.outbox_delivery.deliver_due()
        escalations = fake_peers.of_type("consult.escalated")
        assert [e["peer"] for e in escalations] == [
            "/internal/triage/events",
            "/internal/audit/events",
        ]
        assert escalations[0]["data"]["reason"] == "not_accepted"
        assert escalations[0]["data"]["waited_seconds"] == 120
        sample = resources.registry.get_sample_value(
            "reach_escalations_total", {"reason": "not_accepted"}
        )
        assert sample == 1

        clock.advance(timedelta(seconds=120))
        await engine.run_once()  # and again, for as long as it waits
        assert (
            resources.registry.get_sample_value(
                "reach_escalations_total", {"reason": "not_accepted"}
            )
            == 2
        )

        await desk.consultant("dr-late", ["frailty"])
        await engine.run_once()
        assert offered_case(await desk.log("dr-late")) == case["id"]

    async def test_an_accepted_case_without_advice_escalates(
        self, desk: Desk, engine: RoutingEngine, clock: ManualClock, resources: Resources
    ) -> None:
        await desk.consultant("dr-a", ["frailty"])
        await desk.send_case(snapshot(clock))
        await engine.run_once()
        [offer] = await desk.offers("dr-a")
        await desk.accept("dr-a", offer["offer_id"])
        clock.advance(timedelta(seconds=900))
        await engine.run_once()
        assert (
            resources.registry.get_sample_value("reach_escalations_total", {"reason": "no_advice"})
            == 1
        )
        assert (
            resources.registry.get_sample_value(
                "reach_escalations_total", {"reason": "not_accepted"}
            )
            is None
        )


class TestPriorityAndChanges:
    async def test_worse_observations_move_a_case_up_the_queue(
        self, desk: Desk, engine: RoutingEngine, clock: ManualClock
    ) -> None:
        await desk.consultant("dr-a", ["frailty"], available=False)
        older, newer = snapshot(clock, priority=3), None
        await desk.send_case(older)
        clock.advance(timedelta(seconds=10))
        newer = snapshot(clock, priority=3)
        await desk.send_case(newer)
        worse = {**newer, "version": 2, "priority": 1}
        await desk.send_case(worse)
        await desk.status("dr-a", "available")
        await engine.run_once()
        assert offered_case(await desk.log("dr-a")) == newer["id"]

    async def test_a_waiting_case_ages_into_priority(
        self, desk: Desk, engine: RoutingEngine, clock: ManualClock
    ) -> None:
        await desk.consultant("dr-a", ["frailty"], available=False)
        patient_one = snapshot(clock, priority=4)
        await desk.send_case(patient_one)
        clock.advance(timedelta(minutes=11))  # two ageing steps: 4 -> 2
        urgent_later = snapshot(clock, priority=3)
        await desk.send_case(urgent_later)
        await desk.status("dr-a", "available")
        await engine.run_once()
        assert offered_case(await desk.log("dr-a")) == patient_one["id"]

    async def test_cancelling_withdraws_every_offer_and_sends_nothing_else(
        self, desk: Desk, engine: RoutingEngine, clock: ManualClock, resources: Resources
    ) -> None:
        """In one statement on the offers: the close returns them, no read comes first."""
        await desk.consultant("dr-em1", ["emergency_medicine"])
        await desk.consultant("dr-em2", ["emergency_medicine"])
        case = snapshot(clock, specialty="stroke")
        await desk.send_case(case)
        await engine.run_once()

        def on_the_offers(statement: str) -> bool:
            return statement.startswith(("SELECT consult_offer.", "UPDATE consult_offer"))

        with statements_sent(resources.engine, on_the_offers) as sent:
            await desk.send_case({**case, "version": 2, "status": "cancelled"})
        assert [s.split()[0] for s in sent] == ["UPDATE"]
        await engine.run_once()
        for name in ("dr-em1", "dr-em2"):
            log = await desk.log(name)
            assert kinds(log) == ["offer", "offer_withdrawn"]
            assert log[1][1]["reason"] == "cancelled"
            assert await desk.offers(name) == []

    async def test_a_case_never_accepted_is_not_searched_for_a_consult(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        """Only accepting a case gives it a consult (and its `accepted_at`)."""
        await desk.consultant("dr-a", ["frailty"])
        case = snapshot(clock)
        await desk.send_case(case)

        def reads_its_consult(statement: str) -> bool:
            return statement.startswith("SELECT") and "consult_consult.case_id = " in statement

        with statements_sent(resources.engine, reads_its_consult) as reads:
            await desk.send_case({**case, "version": 2, "priority": 1})
            await desk.send_case({**case, "version": 3, "status": "cancelled"})
        assert reads == []
        log = await desk.log("dr-a")
        assert kinds(log) == ["offer", "case_updated", "offer_withdrawn"]

    async def test_a_stale_or_repeated_snapshot_changes_nothing(
        self, desk: Desk, engine: RoutingEngine, clock: ManualClock
    ) -> None:
        await desk.consultant("dr-a", ["frailty"])
        case = snapshot(clock)
        await desk.send_case({**case, "version": 2, "priority": 1})
        assert await desk.send_case({**case, "version": 1, "priority": 4}) == ["accepted"]
        response = await desk.http.get("/v1/queue", headers={"Authorization": f"Bearer {_coord()}"})
        assert [item["priority"] for item in response.json()["items"]] == [1]

    async def test_a_batch_is_applied_in_order_as_each_event_would_be_alone(
        self, desk: Desk, engine: RoutingEngine, clock: ManualClock
    ) -> None:
        await desk.consultant("dr-a", ["frailty"])
        first, second = snapshot(clock, priority=3), snapshot(clock, priority=4)
        outcomes = await desk.send_case(
            first,
            {**first, "version": 2, "priority": 1},  # opened and changed in the same batch
            second,
            {**second, "version": 2, "status": "cancelled"},
            {**first, "version": 1, "priority": 4},  # late: changes nothing
        )
        assert outcomes == ["accepted"] * 5
        # One malformed event does not hold back the rest of its batch.
        third = snapshot(clock, priority=4)
        malformed = {**snapshot(clock), "priority": "urgent"}
        assert await desk.send_case(third, malformed) == ["accepted", "rejected"]
        response = await desk.http.get("/v1/queue", headers={"Authorization": f"Bearer {_coord()}"})
        items = response.json()["items"]
        assert [(item["case_id"], item["priority"]) for item in items] == [
            (first["id"], 1),
            (third["id"], 4),
        ]
        await engine.run_once()
        assert offered_case(await desk.log("dr-a")) == first["id"]


def _coord() -> str:
    return token("coordinator", "ops")


class TestHandover:
    async def test_an_offer_held_across_the_end_of_a_shift_moves_to_the_next_shift(
        self, desk: Desk, engine: RoutingEngine, clock: ManualClock
    ) -> None:
        await desk.consultant("dr-night", ["frailty"], on_shift_for=[])
        await desk.consultant("dr-day", ["frailty"], on_shift_for=[])
        handover = clock.now() + timedelta(minutes=5)
        await desk.shift("dr-night", "frailty", handover - timedelta(hours=12), hours=12)
        await desk.shift("dr-day", "frailty", handover, hours=12)
        clock.advance(timedelta(minutes=4, seconds=50))
        await desk.send_case(snapshot(clock))  # offered on arrival, to the night shift
        await engine.run_once()
        assert kinds(await desk.log("dr-night")) == ["offer"]
        clock.advance(timedelta(seconds=10))  # 10 s into the offer, the night shift ends
        await engine.run_once()
        night = await desk.log("dr-night")
        assert kinds(night) == ["offer", "offer_withdrawn"]
        assert night[1][1]["reason"] == "reassigned"
        assert kinds(await desk.log("dr-day")) == ["offer"]


class TestOfferedOnArrival:
    """A new case is routed in the transaction that records it, by the same pass a
    wake-up runs, without waiting for the routing loop."""

    async def test_a_new_case_is_offered_in_the_transaction_that_records_it(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        await desk.consultant("dr-a", ["frailty"])
        case = snapshot(clock)
        began: list[object] = []

        def count(connection: object) -> None:
            began.append(connection)

        event.listen(resources.engine.sync_engine, "begin", count)
        try:
            await desk.send_case(case)  # no routing pass runs in this test
        finally:
            event.remove(resources.engine.sync_engine, "begin", count)
        assert len(began) == 1
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


class TestWakeUpPasses:
    """A change wakes the router, which routes what the change may have moved. Cases
    waiting on a consultant's answer are left to their answer or their deadline, so a
    wake-up costs the same however many of them there are."""

    async def test_a_wake_up_leaves_cases_waiting_on_an_answer_alone(
        self, desk: Desk, engine: RoutingEngine, clock: ManualClock, resources: Resources
    ) -> None:
        for name in ("dr-a", "dr-b", "dr-c", "dr-d"):
            await desk.consultant(name, ["frailty"])
        cases = [snapshot(clock, priority=2) for _ in range(3)]
        for case in cases:
            await desk.send_case(case)
        await engine.run_once()
        held = {name: await desk.offers(name) for name in ("dr-a", "dr-b", "dr-c", "dr-d")}
        assert sorted(len(offers) for offers in held.values()) == [0, 1, 1, 1]

        transactions: list[object] = []

        def count(connection: object) -> None:
            transactions.append(connection)

        listen = resources.engine.sync_engine
        event.listen(listen, "begin", count)
        try:
            await engine.route_changes()
            assert len(transactions) == 1  # the look at the queue, alone; no case reread
            free = next(name for name, offers in held.items() if not offers)
            decliner, [offer] = next((n, o) for n, o in held.items() if o)
            await desk.decline(decliner, offer["offer_id"])
            transactions.clear()
            await engine.route_changes()
        finally:
            event.remove(listen, "begin", count)
        # The look at the queue, alone; then the view, and the declined case alone,
        # together in one transaction.
        assert len(transactions) == 2
        [moved] = await desk.offers(free)
        assert moved["case"]["id"] == offer["case"]["id"]

    async def test_with_every_case_awaiting_an_answer_a_wake_up_reads_no_rota(
        self, desk: Desk, engine: RoutingEngine, clock: ManualClock, resources: Resources
    ) -> None:
        for name in ("dr-a", "dr-b", "dr-c"):
            await desk.consultant(name, ["frailty"])
        for _ in range(2):
            await desk.send_case(snapshot(clock))  # each offered to one consultant

        def reads_the_rota(statement: str) -> bool:
            return statement.startswith("SELECT") and (
                "FROM consult_shift" in statement or "FROM consult_consult " in statement
            )

        with statements_sent(resources.engine, reads_the_rota) as rota_reads:
            await engine.route_changes()
        assert rota_reads == []
        # A case whose offer closed can move: then the rota is read, and it moves.
        [offer] = await desk.offers("dr-a")  # the most free (the first by name) has one
        await desk.decline("dr-a", offer["offer_id"])
        with statements_sent(resources.engine, reads_the_rota) as rota_reads:
            await engine.route_changes()
        assert rota_reads != []
        [moved] = await desk.offers("dr-c")
        assert moved["case"]["id"] == offer["case"]["id"]

    async def test_a_consultant_who_goes_away_after_the_pass_read_the_rota_is_not_offered(
        self, desk: Desk, router_app: FastAPI, clock: ManualClock, resources: Resources
    ) -> None:
        """The pass's view of who is free may be stale by the time it offers: the offer
        goes by the consultant's row as it is once locked."""
        if resources.engine.dialect.name == "sqlite":
            pytest.skip("SQLite has one writer: nobody changes the rota while a pass runs")
        ctx = router_app.state.router
        await desk.consultant("dr-a", ["frailty"], available=False)
        case = snapshot(clock)
        await desk.send_case(case)  # nobody free: it waits
        await desk.status("dr-a", "available")
        async with unit_of_work(resources.sessionmaker) as session:
            view = await routing.RoutingView.load(session, ctx, now=clock.now())
            assert view.free_in("frailty") == {"dr-a"}
            await desk.status("dr-a", "away")  # committed meanwhile, on another connection
            await routing.route_case(session, ctx, view, case_id=case["id"], now=clock.now())
        assert await desk.log("dr-a") == []

    async def test_a_consultant_locked_for_an_offer_is_read_afresh(
        self, desk: Desk, resources: Resources
    ) -> None:
        """Even when the session holds the consultant already, the lock reads their row
        as it is now, not as the session last saw it."""
        if resources.engine.dialect.name == "sqlite":
            pytest.skip("SQLite has one writer: nobody changes the rota while a pass runs")
        await desk.consultant("dr-a", ["frailty"])
        async with unit_of_work(resources.sessionmaker) as session:
            seen = await rota_repo.get_consultant(session, "dr-a")
            assert seen is not None
            assert seen.status == "available"
            await desk.status("dr-a", "away")  # committed meanwhile, on another connection
            locked = await rota_repo.lock_consultant_if_free(session, "dr-a")
            assert locked is seen
            assert locked.status == "away"

    async def test_the_case_routed_with_the_view_is_read_afresh_under_its_lock(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        case = snapshot(clock, priority=4)
        await desk.send_case(case)
        async with unit_of_work(resources.sessionmaker) as session:
            [seen] = await case_repo.open_cases(session, limit=10, with_snapshot=False)
            # Another writer changes the case after the pass read it, before the lock.
            await session.execute(
                text("UPDATE consult_case SET priority = 1 WHERE id = :id"), {"id": seen.id}
            )
            locked = await case_repo.lock_open_case(session, seen.id)
            assert locked is seen
            assert locked.priority == 1
            assert locked.snapshot["id"] == case["id"]  # the whole row, once locked

    async def test_a_pass_reads_the_clinical_document_only_of_the_case_it_routes(
        self, desk: Desk, engine: RoutingEngine, clock: ManualClock, resources: Resources
    ) -> None:
        waiting = [snapshot(clock, priority=4) for _ in range(3)]
        for case in waiting:  # nobody on call: they wait
            await desk.send_case(case)
        await desk.consultant("dr-a", ["frailty"])

        def reads_cases(statement: str) -> bool:
            return statement.startswith("SELECT") and "FROM consult_case" in statement

        with statements_sent(resources.engine, reads_cases) as selected:
            await engine.route_changes()
        with_document = [s for s in selected if "consult_case.snapshot" in s]
        # The pass orders every open case from their routing columns; only the one offered
        # (to the only consultant) is read whole.
        assert len(selected) > len(with_document) == 1
        assert len(await desk.offers("dr-a")) == 1
