"""A triage_api outbox on a real database, with its peers over HTTP faked at the edge."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.embedded import EmbeddedSettings
from services.shared.clients.peers import PeerDirectory
from services.shared.clock import ManualClock
from services.shared.db.models import TriageOutbox
from services.shared.outbox import Outbox, OutboxDelivery
from services.shared.resources import Resources, open_resources
from tests.shared.outbox.support import make_delivery
from tests.support import FakePeer


@pytest.fixture
async def resources(
    settings: EmbeddedSettings, clock: ManualClock, fake_peers: FakePeer
) -> AsyncIterator[Resources]:
    quick = settings.model_copy(update={"peer_timeout_seconds": 0.3})
    async with open_resources(
        quick, clock=clock, peer_transport=fake_peers.transport(), peers=PeerDirectory.embedded()
    ) as built:
        yield built


@pytest.fixture
def outbox(resources: Resources) -> Outbox:
    return Outbox(
        service="triage_api", model=TriageOutbox, notifier=resources.notifier, clock=resources.clock
    )


@pytest.fixture
def delivery(resources: Resources, outbox: Outbox, settings: EmbeddedSettings) -> OutboxDelivery:
    return make_delivery(resources, outbox, settings)
