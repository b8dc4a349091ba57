"""What every app gets from `install_common`: the envelope for the unexpected, readiness
that tells the truth about the database, per-route metrics with templates as labels."""

from __future__ import annotations

import asyncio
import gc
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg.exceptions as asyncpg_errors
import httpx
import pytest
import sqlalchemy.exc as sqlalchemy_errors
from fastapi import FastAPI, WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from services.shared.resources import Resources, open_resources
from services.shared.settings import ServiceSettings
from services.shared.web import install_common
from services.shared.ws import CLOSE_TRY_AGAIN_LATER
from tests.support import INTERNAL_SECRET, JWT_SECRET, running_server, scrape

PATIENT_DETAIL = "Mrs Zebedee-Quartermaine 9434765919"


def settings_for(url: str, tmp_path: Path) -> ServiceSettings:
    return ServiceSettings(
        database_url=url, data_dir=tmp_path, jwt_secret=JWT_SECRET, internal_secret=INTERNAL_SECRET
    )


def refused() -> Exception:
    return sqlalchemy_errors.OperationalError(
        "SELECT 1", {}, ConnectionRefusedError(111, "connection refused")
    )


async def client_for(resources: Resources) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=probe_app(resources))
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
        yield client


def probe_app(resources: Resources) -> FastAPI:
    app = FastAPI()
    install_common(app, service="probe", max_body_bytes=1024 * 1024)
    app.state.resources = resources

    @app.get("/v1/things/{thing_id}")
    async def explode(thing_id: str) -> None:
        raise RuntimeError(f"{PATIENT_DETAIL} broke {thing_id}")

    @app.get("/v1/unreachable/{kind}")
    async def unreachable(kind: str) -> None:
        # What SQLAlchemy raises when the database is down, restarting, or busy.
        causes: dict[str, Exception] = {
            "refused": ConnectionRefusedError(111, "connection refused"),
            "shutdown": asyncpg_errors.AdminShutdownError("terminating connection"),
            "sqlite-busy": sqlite3.OperationalError("database is locked"),
            # Broken off by PostgreSQL to end a deadlock: sent again, it goes through.
            "deadlock": asyncpg_errors.DeadlockDetectedError("deadlock detected"),
        }
        raise sqlalchemy_errors.OperationalError("SELECT 1", {}, causes[kind])

    @app.websocket("/v1/unreachable-stream")
    async def unreachable_stream(websocket: WebSocket) -> None:
        await websocket.accept()
        raise refused()

    return app


@pytest.fixture
async def client(database_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with open_resources(settings_for(database_url, tmp_path)) as resources:
        async for built in client_for(resources):
            yield built


class TestUnexpectedErrors:
    @pytest.mark.parametrize("kind", ["refused", "shutdown", "sqlite-busy", "deadlock"])
    async def test_an_unreachable_database_is_a_503_to_retry(
        self, client: httpx.AsyncClient, kind: str
    ) -> None:
        response = await client.get(f"/v1/unreachable/{kind}")
        assert response.status_code == 503
        assert response.json()["error"] == "database_unavailable"
        assert response.headers["retry-after"] == "2"

    async def test_a_socket_that_cannot_reach_the_database_is_told_to_come_back(
        self, database_url: str, tmp_path: Path
    ) -> None:
        async with (
            open_resources(settings_for(database_url, tmp_path)) as resources,
            running_server(probe_app(resources)) as host,
            connect(f"ws://{host}/v1/unreachable-stream") as socket,
        ):
            with pytest.raises(ConnectionClosed) as closed:
                await socket.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == CLOSE_TRY_AGAIN_LATER

    async def test_an_unhandled_error_is_a_generic_500_with_the_request_id(
        self, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.ERROR, logger="reach"):
            response = await client.get("/v1/things/t-1")
        assert response.status_code == 500
        body = response.json()
        assert body["error"] == "internal_error"
        assert body["request_id"] == response.headers["x-request-id"]
        assert PATIENT_DETAIL not in response.text
        # The log names the route template and the error's kind, never the request's values.
        assert "unhandled on GET /v1/things/{thing_id}: RuntimeError" in caplog.text
        assert PATIENT_DETAIL not in caplog.text
        assert "t-1" not in caplog.text

    async def test_metrics_label_routes_by_template(self, client: httpx.AsyncClient) -> None:
        await client.get("/v1/things/t-1")
        await client.get("/v1/things/t-2")
        text = (await client.get("/metrics")).text
        assert 'route="/v1/things/{thing_id}"' in text
        assert "t-1" not in text

    async def test_metrics_count_the_collectors_full_passes(
        self, client: httpx.AsyncClient
    ) -> None:
        async def full_passes() -> float:
            return (await scrape(client))[("reach_gc_pause_seconds_count", (("generation", "2"),))]

        before = await full_passes()
        gc.collect()
        gc.collect()

        assert await full_passes() >= before + 2


class TestReadiness:
    async def test_ready_when_the_database_answers(self, client: httpx.AsyncClient) -> None:
        assert (await client.get("/readyz")).status_code == 200

    async def test_not_ready_but_alive_when_it_does_not(self, tmp_path: Path) -> None:
        unreachable = "sqlite+aiosqlite:////proc/reach-nowhere/reach.db"
        before = set(threading.enumerate())
        async with open_resources(settings_for(unreachable, tmp_path)) as resources:
            async for client in client_for(resources):
                ready = await client.get("/readyz")
                assert ready.status_code == 503
                assert ready.json()["status"] == "unavailable"
                assert (await client.get("/healthz")).status_code == 200
        # aiosqlite stops a connection that failed to open on its own thread, which then
        # reports back to this event loop: let it do so before the loop closes.
        for thread in set(threading.enumerate()) - before:
            if "_connection_worker_thread" in thread.name:
                await asyncio.to_thread(thread.join, 5)
