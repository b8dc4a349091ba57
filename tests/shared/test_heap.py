"""`reach serve` freezes what start-up built, before the server takes requests."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import ASGIApp

from services.shared.heap import FreezeAfterStartup


@pytest.fixture(autouse=True)
def _unfrozen_after() -> Iterator[None]:
    # The test process must not keep what a test froze: its later garbage would leak.
    yield
    gc.unfreeze()


def is_frozen(thing: object) -> bool:
    """Tracked by the collector, yet in none of the generations it walks."""
    return gc.is_tracked(thing) and not any(
        candidate is thing for generation in range(3) for candidate in gc.get_objects(generation)
    )


def app_building_a_table() -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.table = {"built": [str(n) for n in range(10)]}  # lives as long as the app
        yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    return app


async def run_lifespan(served: ASGIApp, app: FastAPI) -> list[tuple[str, bool]]:
    """Start up and shut down as a server does; each message the server hears, and whether
    start-up's table was frozen when it heard it."""
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    heard: list[tuple[str, bool]] = []

    async def receive() -> dict[str, Any]:
        return next(incoming)

    async def send(message: Any) -> None:
        heard.append((message["type"], is_frozen(app.state.table)))

    await served({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    return heard


async def test_start_up_is_frozen_before_the_server_hears_it_finished() -> None:
    app = app_building_a_table()

    heard = await run_lifespan(FreezeAfterStartup(app), app)

    assert heard == [("lifespan.startup.complete", True), ("lifespan.shutdown.complete", True)]


async def test_without_it_start_up_stays_with_the_collector() -> None:
    app = app_building_a_table()

    heard = await run_lifespan(app, app)

    assert heard == [("lifespan.startup.complete", False), ("lifespan.shutdown.complete", False)]


async def test_requests_pass_through_unchanged() -> None:
    transport = httpx.ASGITransport(app=FreezeAfterStartup(app_building_a_table()))
    async with httpx.AsyncClient(transport=transport, base_url="http://reach.test") as client:
        response = await client.get("/ping")

    assert (response.status_code, response.json()) == (200, {"pong": "yes"})
