"""First accept wins: twenty consultants accepting or claiming one case at once, on one
app and on two apps sharing one PostgreSQL database. Exactly one consult is made."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from services.consult_router.app import create_app
from services.consult_router.engine import RoutingEngine
from services.embedded import EmbeddedSettings
from services.shared.clients.peers import PeerDirectory
from services.shared.clock import ManualClock
from services.shared.db.models import ConsultConsult, ConsultOffer
from services.shared.db.session import unit_of_work
from services.shared.resources import Resources, open_resources
from tests import support
from tests.consult_router.conftest import Desk, snapshot
from tests.support import FakePeer, auth

CROWD = [f"dr-{n:02d}" for n in range(20)]


async def crowd_with_offers(desk: Desk, engine: RoutingEngine, clock: ManualClock) -> str:
    """Twenty emergency physicians, each offered the same case (nobody on call for stroke)."""
    for name in CROWD:
        await desk.consultant(name, ["emergency_medicine"])
    case = snapshot(clock, specialty="stroke")
    await desk.send_case(case)
    await engine.run_once()
    case_id: str = case["id"]
    return case_id


async def race(clients: list[httpx.AsyncClient], desk: Desk, case_id: str) -> list[httpx.Response]:
    """Half accept their own offer, half claim from the queue, spread over the clients."""
    calls = []
    for index, name in enumerate(CROWD):
        client = clients[index % len(clients)]
        if index % 2 == 0:
            [offer] = await desk.offers(name)
            calls.append(
                client.post(
                    f"/v1/offers/{offer['offer_id']}/accept", headers=auth("consultant", name)
                )
            )
        else:
            calls.append(
                client.post(f"/v1/queue/{case_id}/claim", headers=auth("consultant", name))
            )
    return list(await asyncio.gather(*calls))


async def consults_made(resources: Resources, case_id: str) -> int:
    async with unit_of_work(resources.sessionmaker) as session:
        statement = (
            select(func.count())
            .select_from(ConsultConsult)
            .where(ConsultConsult.case_id == case_id)
        )
        return int((await session.execute(statement)).scalar_one())


class TestOneWinner:
    async def test_twenty_at_once_on_one_app(
        self,
        desk: Desk,
        engine: RoutingEngine,
        clock: ManualClock,
        http: httpx.AsyncClient,
        resources: Resources,
    ) -> None:
        case_id = await crowd_with_offers(desk, engine, clock)
        responses = await race([http], desk, case_id)
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] + [409] * 19
        losers = {r.json()["error"] for r in responses if r.status_code == 409}
        assert losers <= {"offer_taken", "case_taken"}
        assert await consults_made(resources, case_id) == 1
        async with unit_of_work(resources.sessionmaker) as session:
            still_open = (
                await session.execute(
                    select(func.count())
                    .select_from(ConsultOffer)
                    .where(ConsultOffer.state == "open")
                )
            ).scalar_one()
        assert still_open == 0


@pytest.fixture
async def second_app(
    router_settings: EmbeddedSettings, clock: ManualClock, fake_peers: FakePeer
) -> AsyncIterator[FastAPI]:
    """Another process's worth of router: its own pool on the same database."""
    async with open_resources(
        router_settings,
        clock=clock,
        peer_transport=fake_peers.transport(),
        peers=PeerDirectory.embedded(),
    ) as resources:
        app = create_app(router_settings, resources=resources)
        async with app.router.lifespan_context(app):
            yield app


@pytest.mark.postgres
class TestOneWinnerAcrossReplicas:
    @pytest.fixture(params=["postgresql"])
    def database_url(self, request: pytest.FixtureRequest) -> str:
        url: str = request.getfixturevalue("postgres_url")
        support.run_blocking(support.truncate_all(url))
        return url

    async def test_twenty_at_once_on_two_apps_sharing_postgresql(
        self,
        desk: Desk,
        engine: RoutingEngine,
        clock: ManualClock,
        http: httpx.AsyncClient,
        second_app: FastAPI,
        resources: Resources,
    ) -> None:
        case_id = await crowd_with_offers(desk, engine, clock)
        transport = httpx.ASGITransport(app=second_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://replica-b") as other:
            responses = await race([http, other], desk, case_id)
        assert sorted(r.status_code for r in responses) == [200] + [409] * 19
        assert await consults_made(resources, case_id) == 1
