from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.embedded import EmbeddedApp, EmbeddedSettings, create_app
from services.shared.clock import ManualClock


@pytest.fixture
async def embedded(settings: EmbeddedSettings, clock: ManualClock) -> AsyncIterator[EmbeddedApp]:
    app = create_app(settings, clock=clock)
    async with app.parent.router.lifespan_context(app.parent):
        yield app


@pytest.fixture
def app_under_test(embedded: EmbeddedApp) -> EmbeddedApp:
    return embedded
