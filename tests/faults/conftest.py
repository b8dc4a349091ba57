"""Fault tests run real processes on PostgreSQL, the one shared coordinator of replicas.
They are skipped, with the reason, where no PostgreSQL answers (and fail under CI=true,
through the `postgres_url` fixture)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests import support
from tests.factories import case_body, idempotency_key

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def cluster_database(postgres_url: str) -> str:
    support.run_blocking(support.truncate_all(postgres_url))
    return postgres_url


class Hands:
    """The test's people, talking to the cluster through its balancers."""

    def __init__(self, http: httpx.AsyncClient, urls: dict[str, str]) -> None:
        self.http = http
        self.urls = urls

    async def consultant(self, consultant_id: str, specialty: str = "frailty") -> None:
        router = self.urls["consult-router"]
        admin = support.auth("admin", "rota-admin")
        response = await self.http.put(
            f"{router}/v1/consultants/{consultant_id}",
            json={"name": f"Dr {consultant_id}", "grade": "consultant", "specialties": [specialty]},
            headers=admin,
        )
        assert response.status_code == 200, response.text
        now = datetime.now(UTC)
        response = await self.http.post(
            f"{router}/v1/shifts",
            json={
                "consultant_id": consultant_id,
                "specialty": specialty,
                "starts_at": (now - timedelta(hours=1)).isoformat(),
                "ends_at": (now + timedelta(hours=8)).isoformat(),
            },
            headers=admin,
        )
        assert response.status_code == 201, response.text

    async def submit(
        self, *, key: str | None = None, crew: str = "crew-1", **overrides: Any
    ) -> str:
        response = await self.http.post(
            f"{self.urls['triage-api']}/v1/cases",
            json=case_body(**overrides),
            headers={
                **support.auth("paramedic", crew),
                "Idempotency-Key": key or idempotency_key(),
            },
        )
        assert response.status_code in (200, 201), response.text
        case_id: str = response.json()["id"]
        return case_id

    async def case(self, case_id: str, crew: str = "crew-1") -> dict[str, Any]:
        response = await self.http.get(
            f"{self.urls['triage-api']}/v1/cases/{case_id}", headers=support.auth("paramedic", crew)
        )
        assert response.status_code == 200, response.text
        case: dict[str, Any] = response.json()
        return case


async def consultant_socket(base_url: str, consultant_id: str) -> ClientConnection:
    """A consultant's live socket on one replica, past its welcome, available."""
    socket = await connect(base_url.replace("http://", "ws://") + "/v1/consultant/stream")
    await socket.send(
        json.dumps({"type": "hello", "token": support.token("consultant", consultant_id)})
    )
    welcome = json.loads(await socket.recv())
    assert welcome["type"] == "welcome", welcome
    await socket.send(json.dumps({"type": "status", "status": "available"}))
    return socket


async def next_of(socket: ClientConnection, kind: str, *, timeout: float) -> dict[str, Any]:
    """The next message of `kind`, skipping others (queue refreshes, status replies)."""
    async with asyncio.timeout(timeout):
        while True:
            message: dict[str, Any] = json.loads(await socket.recv())
            if message["type"] == kind:
                return message
