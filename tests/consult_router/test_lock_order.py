"""Timers and presence take a case's lock before anything else of it, as accepts,
cancellations and advice do, and a consultant taking a case locks everyone it tells at
once, in id order: on PostgreSQL none of them waits on another crosswise (a deadlock the
database would end after a second, failing one of the two).

Each test holds a case's lock as the first step of a consultant's or crew's change, lets
the timer or presence change start and wait for it, then takes the next lock that change
would take. Taken the other way round, the second lock would be held by the waiter."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.consult_router import presence
from services.consult_router.cases import withdraw_open_offers
from services.consult_router.engine import RoutingEngine
from services.consult_router.repository import cases as case_repo
from services.consult_router.repository import rota as rota_repo
from services.shared.clock import ManualClock
from services.shared.db.models import ConsultConsult, ConsultConsultant, ConsultOffer
from services.shared.db.session import unit_of_work
from services.shared.resources import Resources
from tests.consult_router.conftest import Desk, snapshot
from tests.support import auth, eventually, waiting_on_a_lock

T = TypeVar("T")


@pytest.fixture(autouse=True)
def _postgres_only(resources: Resources) -> None:
    if resources.engine.dialect.name == "sqlite":
        pytest.skip("SQLite has one writer: its transactions never wait on each other")


async def offered_to_dr_a(desk: Desk, clock: ManualClock) -> str:
    await desk.consultant("dr-a", ["frailty"])
    case = snapshot(clock)
    await desk.send_case(case)
    case_id: str = case["id"]
    return case_id


async def the_offer(resources: Resources, case_id: str) -> ConsultOffer:
    async with unit_of_work(resources.sessionmaker) as session:
        rows = await session.execute(select(ConsultOffer).where(ConsultOffer.case_id == case_id))
        [offer] = rows.scalars()
        return offer


async def started_and_waiting(
    resources: Resources, holder: AsyncSession, work: Coroutine[Any, Any, T]
) -> asyncio.Task[T]:
    """`work` running, and waiting for a lock the test's `holder` session holds."""
    holder_pid = await holder.scalar(text("SELECT pg_backend_pid()"))
    task = asyncio.create_task(work)
    await eventually(lambda: waiting_on_a_lock(resources.engine, held_by=holder_pid), timeout=10)
    assert not task.done()
    return task


async def test_an_offer_expiring_as_the_crew_cancels_waits_for_the_cancellation(
    desk: Desk, clock: ManualClock, resources: Resources, engine: RoutingEngine, router_app: FastAPI
) -> None:
    case_id = await offered_to_dr_a(desk, clock)
    clock.advance(timedelta(minutes=1))  # past the offer's deadline
    async with unit_of_work(resources.sessionmaker) as session:  # the cancellation
        case = await case_repo.get_case(session, case_id, for_update=True)
        assert case is not None
        sweep = await started_and_waiting(resources, session, engine.run_once())
        # The cancellation's next step closes the case's offers, which the expiry must
        # not be holding while it waits for the case.
        await withdraw_open_offers(session, router_app.state.router, case=case, reason="cancelled")
        case.status = "cancelled"
    await asyncio.wait_for(sweep, 10)
    offer = await the_offer(resources, case_id)
    assert (offer.state, offer.close_reason) == ("withdrawn", "cancelled")
    told = [
        payload["reason"] for kind, payload in await desk.log("dr-a") if kind == "offer_withdrawn"
    ]
    assert told == ["cancelled"]  # not told it expired as well


async def test_advice_given_as_it_falls_overdue_is_not_escalated(
    desk: Desk, clock: ManualClock, resources: Resources, engine: RoutingEngine
) -> None:
    case_id = await offered_to_dr_a(desk, clock)
    [offer] = await desk.offers("dr-a")
    assert (await desk.accept("dr-a", offer["offer_id"])).status_code == 200
    clock.advance(timedelta(hours=1))  # past the advice's due time
    async with unit_of_work(resources.sessionmaker) as session:  # the advice
        assert await case_repo.get_case(session, case_id, for_update=True) is not None
        sweep = await started_and_waiting(resources, session, engine.run_once())
        consult = await case_repo.consult_for_case(session, case_id)
        assert consult is not None
        consult.advised_at, consult.advice_due_at = clock.now(), None
        await session.flush()  # the consult's row, which the escalation must not hold
    await asyncio.wait_for(sweep, 10)
    async with unit_of_work(resources.sessionmaker) as session:
        rows = await session.execute(
            select(ConsultConsult.advice_due_at).where(ConsultConsult.case_id == case_id)
        )
        assert rows.scalar_one() is None  # an escalation would have set the next due time


async def test_going_away_as_an_offer_is_accepted_waits_for_the_accept(
    desk: Desk, clock: ManualClock, resources: Resources, http: httpx.AsyncClient
) -> None:
    case_id = await offered_to_dr_a(desk, clock)
    async with unit_of_work(resources.sessionmaker) as session:  # the accept
        assert await case_repo.get_case(session, case_id, for_update=True) is not None
        away = await started_and_waiting(
            resources,
            session,
            http.put(
                "/v1/consultant/status", json={"status": "away"}, headers=auth("consultant", "dr-a")
            ),
        )
        # The accept's next lock is the consultant's, which going away must not hold yet.
        assert await rota_repo.get_consultant(session, "dr-a", for_update=True) is not None
    response = await asyncio.wait_for(away, 10)
    assert response.status_code == 200, response.text
    offer = await the_offer(resources, case_id)
    assert (offer.state, offer.close_reason) == ("withdrawn", "reassigned")


async def test_a_lapsed_presence_let_go_as_an_offer_is_accepted_waits_for_the_accept(
    desk: Desk, clock: ManualClock, resources: Resources, router_app: FastAPI
) -> None:
    ctx = router_app.state.router
    case_id = await offered_to_dr_a(desk, clock)
    async with unit_of_work(resources.sessionmaker) as session:
        await presence.connect(session, ctx, "dr-a")
    lapsed = clock.now() + timedelta(seconds=ctx.settings.presence_stale_seconds + 1)

    async def reap() -> None:
        async with unit_of_work(resources.sessionmaker) as session:
            await presence.reap_stale(session, ctx, now=lapsed)

    async with unit_of_work(resources.sessionmaker) as session:  # the accept
        assert await case_repo.get_case(session, case_id, for_update=True) is not None
        reaping = await started_and_waiting(resources, session, reap())
        assert await rota_repo.get_consultant(session, "dr-a", for_update=True) is not None
    await asyncio.wait_for(reaping, 10)
    offer = await the_offer(resources, case_id)
    assert (offer.state, offer.close_reason) == ("withdrawn", "reassigned")
    async with unit_of_work(resources.sessionmaker) as session:
        consultant = await session.get(ConsultConsultant, "dr-a")
        assert consultant is not None
        assert consultant.status == "away"


async def test_two_consultants_claiming_each_others_offered_cases_wait_in_turn(
    desk: Desk, clock: ManualClock, resources: Resources, http: httpx.AsyncClient
) -> None:
    """dr-a is offered case C and dr-b case D; each claims the other's from the queue. A
    take tells the case's offer holder it went elsewhere, which locks that consultant."""
    await desk.consultant("dr-a", ["frailty"])
    c = snapshot(clock)
    await desk.send_case(c)
    await desk.consultant("dr-b", ["frailty"])
    d = snapshot(clock)
    await desk.send_case(d)
    assert [o["case"]["id"] for o in await desk.offers("dr-a")] == [c["id"]]
    assert [o["case"]["id"] for o in await desk.offers("dr-b")] == [d["id"]]
    async with unit_of_work(resources.sessionmaker) as session:  # dr-a claiming D
        assert await case_repo.get_case(session, d["id"], for_update=True) is not None
        assert await rota_repo.get_consultant(session, "dr-a", for_update=True) is not None
        claim = await started_and_waiting(
            resources,
            session,
            http.post(f"/v1/queue/{c['id']}/claim", headers=auth("consultant", "dr-b")),
        )
        # dr-a's claim goes on to tell D's offer holder, dr-b, whose row dr-b's own claim
        # must not be holding while it waits for dr-a's.
        assert await rota_repo.get_consultant(session, "dr-b", for_update=True) is not None
    response = await asyncio.wait_for(claim, 10)
    assert response.status_code == 200, response.text
    offer = await the_offer(resources, c["id"])
    assert (offer.state, offer.close_reason) == ("withdrawn", "accepted_elsewhere")
