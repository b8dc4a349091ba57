"""Routing scenarios in the spirit of GoAlert's smoke tests: a real app, a real
database, the clock jumped forward. Each asserts exactly which consultant got which
offer and when, and that nothing else was sent."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import event, select, text

from services.consult_router import routing
from services.consult_router.engine import RoutingEngine
from services.consult_router.repository import cases as case_repo
from services.embedded import EmbeddedSettings
from services.shared.clock import ManualClock
from services.shared.db.models import ConsultConsultant
from services.shared.db.session import unit_of_work
from services.shared.resources import Resources
from tests.consult_router.conftest import Desk, kinds, offered_case, snapshot
from tests.support import FakePeer, statements_sent, token


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


async def offered_when_free(desk: Desk, engine: RoutingEngine, consultant_id: str) -> str:
    """The case a consultant is offered once they make themselves available and a
    routing pass has run."""
    await desk.status(consultant_id, "available")
    await engine.run_once()
    return offered_case(await desk.log(consultant_id))


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
        assert await offered_when_free(desk, engine, "dr-a") == newer["id"]

    async def test_a_waiting_case_ages_into_priority(
        self, desk: Desk, engine: RoutingEngine, clock: ManualClock
    ) -> None:
        await desk.consultant("dr-a", ["frailty"], available=False)
        patient_one = snapshot(clock, priority=4)
        await desk.send_case(patient_one)
        clock.advance(timedelta(minutes=11))  # two ageing steps: 4 -> 2
        urgent_later = snapshot(clock, priority=3)
        await desk.send_case(urgent_later)
        assert await offered_when_free(desk, engine, "dr-a") == patient_one["id"]

    async def test_a_backlog_beyond_the_window_never_hides_an_urgent_case(
        self,
        desk: Desk,
        engine: RoutingEngine,
        clock: ManualClock,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(routing, "QUEUE_WINDOW", 2)
        await desk.consultant("dr-a", ["frailty"], available=False)
        backlog = []
        for _ in range(3):
            backlog.append(snapshot(clock, priority=3))
            await desk.send_case(backlog[-1])
            clock.advance(timedelta(seconds=10))
        urgent = snapshot(clock, priority=1)
        await desk.send_case(urgent)
        assert await offered_when_free(desk, engine, "dr-a") == urgent["id"]

    async def test_a_backlog_in_one_specialty_never_keeps_another_from_its_consultants(
        self,
        desk: Desk,
        engine: RoutingEngine,
        clock: ManualClock,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(routing, "QUEUE_WINDOW", 2)
        await desk.consultant("dr-f", ["frailty"], available=False)
        await desk.consultant("dr-m", ["mental_health"], available=False)
        for _ in range(3):
            await desk.send_case(snapshot(clock, priority=1, score=9))
        clock.advance(timedelta(seconds=30))
        least_urgent = snapshot(clock, specialty="mental_health", priority=4, score=0)
        await desk.send_case(least_urgent)
        assert await offered_when_free(desk, engine, "dr-m") == least_urgent["id"]

    @pytest.mark.parametrize("window", [1, routing.QUEUE_WINDOW])
    async def test_the_window_takes_the_case_aged_into_priority_first(
        self,
        desk: Desk,
        engine: RoutingEngine,
        clock: ManualClock,
        monkeypatch: pytest.MonkeyPatch,
        window: int,
    ) -> None:
        monkeypatch.setattr(routing, "QUEUE_WINDOW", window)
        await desk.consultant("dr-a", ["frailty"], available=False)
        waited_long = snapshot(clock, priority=4)
        await desk.send_case(waited_long)
        # Exactly three ageing steps: 4 -> 1, level with a new priority-1 case and, as
        # alike in NEWS2, ahead of it by the longer wait.
        clock.advance(timedelta(minutes=15))
        await desk.send_case(snapshot(clock, priority=1))
        assert await offered_when_free(desk, engine, "dr-a") == waited_long["id"]

    @pytest.mark.parametrize("window", [1, routing.QUEUE_WINDOW])
    async def test_the_window_takes_the_sicker_of_two_alike_first(
        self,
        desk: Desk,
        engine: RoutingEngine,
        clock: ManualClock,
        monkeypatch: pytest.MonkeyPatch,
        window: int,
    ) -> None:
        monkeypatch.setattr(routing, "QUEUE_WINDOW", window)
        await desk.consultant("dr-a", ["frailty"], available=False)
        await desk.send_case(snapshot(clock, priority=1, score=5))
        await desk.send_case(snapshot(clock, priority=1, score=None))  # unscored: as 0
        clock.advance(timedelta(minutes=16))  # waiting raises no case above the highest
        sicker = snapshot(clock, priority=1, score=9)
        await desk.send_case(sicker)
        assert await offered_when_free(desk, engine, "dr-a") == sicker["id"]

    async def test_an_unscored_case_comes_after_a_scored_one_alike(
        self,
        desk: Desk,
        engine: RoutingEngine,
        clock: ManualClock,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(routing, "QUEUE_WINDOW", 1)
        await desk.consultant("dr-a", ["frailty"], available=False)
        await desk.send_case(snapshot(clock, priority=1, score=None))
        clock.advance(timedelta(seconds=30))
        scored = snapshot(clock, priority=1, score=1)
        await desk.send_case(scored)
        assert await offered_when_free(desk, engine, "dr-a") == scored["id"]

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

    async def test_the_queue_shows_each_cases_score_and_flags_as_sent(
        self, desk: Desk, clock: ManualClock
    ) -> None:
        scored = snapshot(clock, score=6, risk_flags=["cannot_walk", "low_spo2"])
        unscored = snapshot(clock, score=None)
        await desk.send_case(scored, unscored)  # nobody on call: both wait
        response = await desk.http.get("/v1/queue", headers={"Authorization": f"Bearer {_coord()}"})
        items = {item["case_id"]: item for item in response.json()["items"]}
        assert items[scored["id"]]["news2"] == scored["news2"]
        assert items[scored["id"]]["risk_flags"] == ["cannot_walk", "low_spo2"]
        assert items[unscored["id"]]["news2"] is None
        assert items[unscored["id"]]["risk_flags"] == []

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
        beyond_the_scale = [{**snapshot(clock), "priority": level} for level in (0, 5)]
        assert await desk.send_case(third, malformed, *beyond_the_scale) == [
            "accepted",
            "rejected",
            "rejected",
            "rejected",
        ]
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

    async def test_the_offer_holds_its_consultants_row_until_the_pass_commits(
        self, desk: Desk, router_app: FastAPI, clock: ManualClock, resources: Resources
    ) -> None:
        """The statement that makes the offer locks the consultant's row: no other
        transaction takes them (to change their status, or to ask them about another
        case) until the pass has committed."""
        if resources.engine.dialect.name == "sqlite":
            pytest.skip("SQLite has one writer: nobody changes the rota while a pass runs")
        ctx = router_app.state.router
        await desk.consultant("dr-a", ["frailty"], available=False)
        case = snapshot(clock)
        await desk.send_case(case)  # nobody free: it waits
        await desk.status("dr-a", "available")

        async def others_can_take_them() -> bool:
            async with unit_of_work(resources.sessionmaker) as other:
                taken = await other.execute(
                    select(ConsultConsultant.id)
                    .where(ConsultConsultant.id == "dr-a")
                    .with_for_update(skip_locked=True)
                )
                return taken.first() is not None

        async with unit_of_work(resources.sessionmaker) as session:
            view = await routing.RoutingView.load(session, ctx, now=clock.now())
            assert await others_can_take_them()  # reading the rota locked nobody
            await routing.route_case(session, ctx, view, case_id=case["id"], now=clock.now())
            assert not await others_can_take_them()
        assert await others_can_take_them()
        assert [kind for kind, _ in await desk.log("dr-a")] == ["offer"]

    async def test_the_case_routed_with_the_view_is_read_afresh_under_its_lock(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        case = snapshot(clock, priority=4)
        await desk.send_case(case)
        async with unit_of_work(resources.sessionmaker) as session:
            [seen], _ = await routing.open_cases_to_route(
                session, now=clock.now(), ageing_step_seconds=300.0
            )
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


class TestWithoutAgeing:
    @pytest.fixture
    def router_settings(self, settings: EmbeddedSettings) -> EmbeddedSettings:
        return settings.model_copy(update={"background_tasks": False, "ageing_step_seconds": 0})

    async def test_a_long_wait_raises_no_case_above_a_more_urgent_one(
        self,
        desk: Desk,
        engine: RoutingEngine,
        clock: ManualClock,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(routing, "QUEUE_WINDOW", 1)
        await desk.consultant("dr-a", ["frailty"], available=False)
        await desk.send_case(snapshot(clock, priority=4, score=9))
        clock.advance(timedelta(hours=2))
        more_urgent = snapshot(clock, priority=3, score=1)
        await desk.send_case(more_urgent)
        assert await offered_when_free(desk, engine, "dr-a") == more_urgent["id"]
