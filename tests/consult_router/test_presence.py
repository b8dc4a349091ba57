"""Presence across processes: each process refreshes every connection it holds in one
heartbeat; the connections of a process that stopped beating lapse, and their consultant
is let go as if the sockets had closed."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from fastapi import FastAPI

from services.consult_router import presence
from services.consult_router.context import RouterContext
from services.consult_router.engine import RoutingEngine
from services.embedded import EmbeddedSettings
from services.shared.clock import ManualClock
from services.shared.db.session import unit_of_work
from services.shared.resources import Resources
from tests.consult_router.conftest import ADMIN, Desk, snapshot

STALE_SECONDS = 10.0


@pytest.fixture
def router_settings(settings: EmbeddedSettings) -> EmbeddedSettings:
    return settings.model_copy(
        update={"background_tasks": False, "presence_stale_seconds": STALE_SECONDS}
    )


async def connect(resources: Resources, ctx: RouterContext, consultant_id: str) -> None:
    async with unit_of_work(resources.sessionmaker) as session:
        await presence.connect(session, ctx, consultant_id)


async def test_a_beating_process_keeps_its_consultants_and_a_silent_one_loses_them(
    desk: Desk,
    engine: RoutingEngine,
    clock: ManualClock,
    resources: Resources,
    router_app: FastAPI,
) -> None:
    here: RouterContext = router_app.state.router
    gone = dataclasses.replace(here, replica_id="a-replica-that-died")
    await desk.consultant("dr-here", ["frailty"])
    await desk.consultant("dr-gone", ["frailty"])
    await connect(resources, here, "dr-here")
    await connect(resources, here, "dr-here")  # a tablet and a phone: one beat for both
    await connect(resources, gone, "dr-gone")

    clock.advance(timedelta(seconds=STALE_SECONDS + 1))
    async with unit_of_work(resources.sessionmaker) as session:
        await presence.heartbeat(session, here)
    await engine.run_once()

    listed = (await desk.http.get("/v1/consultants", headers=ADMIN)).json()
    state = {c["id"]: (c["connected"], c["status"]) for c in listed}
    assert state == {"dr-here": (True, "available"), "dr-gone": (False, "away")}


async def test_each_view_of_a_consultant_says_whether_that_consultant_is_connected(
    desk: Desk, resources: Resources, router_app: FastAPI
) -> None:
    # The single-consultant views read only that consultant's connections; a mix-up
    # between consultants would show a disconnected consultant as reachable, or hide one.
    ctx: RouterContext = router_app.state.router
    await desk.consultant("dr-online", ["frailty"])
    await desk.consultant("dr-offline", ["frailty"])
    await connect(resources, ctx, "dr-online")

    def connected(consultant_id: str) -> tuple[str, bool]:
        return consultant_id, consultant_id == "dr-online"

    for consultant_id in ("dr-online", "dr-offline"):
        response = await desk.http.put(
            f"/v1/consultants/{consultant_id}",
            json={"name": "Dr Renamed", "grade": "consultant", "specialties": ["frailty"]},
            headers=ADMIN,
        )
        body = response.json()
        assert (body["id"], body["connected"]) == connected(consultant_id)
    response = await desk.http.get("/v1/oncall", params={"specialty": "frailty"}, headers=ADMIN)
    on_call = {
        entry["consultant"]["id"]: entry["consultant"]["connected"]
        for entry in response.json()["on_call"]
    }
    assert on_call == dict(map(connected, ("dr-online", "dr-offline")))


async def test_a_goodbye_the_database_missed_is_said_by_the_next_heartbeat(
    desk: Desk, clock: ManualClock, resources: Resources, router_app: FastAPI
) -> None:
    """A socket closed while the database was away left its row, which this process's
    beats would keep fresh: the next beat removes it, and the consultant is let go."""
    ctx: RouterContext = router_app.state.router
    await desk.consultant("dr-a", ["frailty"])
    async with unit_of_work(resources.sessionmaker) as session:
        connection_id = await presence.connect(session, ctx, "dr-a")
    case = snapshot(clock)
    await desk.send_case(case)
    [offer] = await desk.offers("dr-a")
    ctx.unsaid_goodbyes.add(connection_id)  # as the stream leaves it when its goodbye fails

    await presence.beat(ctx, resources.sessionmaker)

    assert ctx.unsaid_goodbyes == set()
    listed = (await desk.http.get("/v1/consultants", headers=ADMIN)).json()
    assert [(c["connected"], c["status"]) for c in listed if c["id"] == "dr-a"] == [(False, "away")]
    withdrawn = [p for kind, p in await desk.log("dr-a") if kind == "offer_withdrawn"]
    assert withdrawn == [{"offer_id": offer["offer_id"], "reason": "reassigned"}]
