"""Every timer is a row: stop the app while an offer is outstanding, start another on the
same database, and the deadline still fires and the case moves on."""

from __future__ import annotations

from datetime import timedelta

import httpx

from services.consult_router.app import create_app
from services.embedded import EmbeddedSettings
from services.shared.clients.peers import PeerDirectory
from services.shared.clock import ManualClock
from services.shared.resources import open_resources
from tests.consult_router.conftest import Desk, snapshot
from tests.support import FakePeer


async def test_an_offers_deadline_survives_a_restart(
    router_settings: EmbeddedSettings, clock: ManualClock, fake_peers: FakePeer
) -> None:
    case = snapshot(clock)
    async with open_resources(
        router_settings,
        clock=clock,
        peer_transport=fake_peers.transport(),
        peers=PeerDirectory.embedded(),
    ) as resources:
        first = create_app(router_settings, resources=resources)
        async with (
            first.router.lifespan_context(first),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=first), base_url="http://a"
            ) as http,
        ):
            desk = Desk(http, clock, resources)
            await desk.consultant("dr-a", ["frailty"])
            await desk.consultant("dr-b", ["frailty"])
            await desk.send_case(case)
            await first.state.engine.run_once()
            assert [k for k, _ in await desk.log("dr-a")] == ["offer"]
    # The process is gone. Time passes. Another starts on the same database.
    clock.advance(timedelta(seconds=45))
    async with open_resources(
        router_settings,
        clock=clock,
        peer_transport=fake_peers.transport(),
        peers=PeerDirectory.embedded(),
    ) as resources:
        second = create_app(router_settings, resources=resources)
        async with (
            second.router.lifespan_context(second),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=second), base_url="http://b"
            ) as http,
        ):
            desk = Desk(http, clock, resources)
            await second.state.engine.run_once()
            log_a = await desk.log("dr-a")
            assert [k for k, _ in log_a] == ["offer", "offer_withdrawn"]
            assert log_a[1][1]["reason"] == "expired"
            log_b = await desk.log("dr-b")
            assert [k for k, _ in log_b] == ["offer"]
            assert log_b[0][1]["case"]["id"] == case["id"]
