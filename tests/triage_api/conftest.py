from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI

from services.embedded import EmbeddedSettings
from services.shared.clients.peers import PeerDirectory
from services.shared.clock import ManualClock
from services.shared.resources import Resources, open_resources
from services.triage_api.app import create_app
from tests.support import FakePeer


@pytest.fixture
async def resources(
    settings: EmbeddedSettings, clock: ManualClock, fake_peers: FakePeer
) -> AsyncIterator[Resources]:
    async with open_resources(
        settings,
        clock=clock,
        peer_transport=fake_peers.transport(),
        peers=PeerDirectory.embedded(),
    ) as built:
        yield built


@pytest.fixture
async def triage_app(settings: EmbeddedSettings, resources: Resources) -> AsyncIterator[FastAPI]:
    app = create_app(settings, resources=resources)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
def app_under_test(triage_app: FastAPI) -> FastAPI:
    return triage_app
