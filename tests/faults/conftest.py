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
from websockets.exceptions import ConnectionClosed

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


class DeskConsultant:
    """A consultant who keeps a socket open whatever happens to the replicas — reconnecting
    and replaying from the last seq they saw — and accepts and advises every case offered.
    """

    def __init__(self, http: httpx.AsyncClient, router_url: str, consultant_id: str) -> None:
        self.http = http
        self.router_url = router_url
        self.consultant_id = consultant_id
        self.advised: set[str] = set()
        self.reconnections = 0
        self._last_seq: int | None = None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._session(stop)
            except (ConnectionClosed, OSError, TimeoutError, ValueError):
                self.reconnections += 1
                await asyncio.sleep(0.2)

    async def _session(self, stop: asyncio.Event) -> None:
        url = self.router_url.replace("http://", "ws://") + "/v1/consultant/stream"
        async with connect(url, open_timeout=5) as socket:
            hello: dict[str, Any] = {
                "type": "hello",
                "token": support.token("consultant", self.consultant_id),
            }
            if self._last_seq is not None:
                hello["after"] = self._last_seq
            await socket.send(json.dumps(hello))
            welcome = json.loads(await asyncio.wait_for(socket.recv(), 10))
            if welcome["type"] != "welcome":
                raise ValueError(f"no welcome: {welcome['type']}")
            await socket.send(json.dumps({"type": "status", "status": "available"}))
            for offer in welcome["offers"]:
                await socket.send(json.dumps({"type": "accept", "offer_id": offer["offer_id"]}))
            for consult in welcome["consults"]:
                if consult["status"] == "accepted":
                    await self._advise(consult["consult_id"], consult["case"]["id"])
            while not stop.is_set():
                try:
                    message = json.loads(await asyncio.wait_for(socket.recv(), 0.5))
                except TimeoutError:
                    await socket.send(json.dumps({"type": "ping"}))
                    continue
                await self._handle(socket, message)

    async def _handle(self, socket: ClientConnection, message: dict[str, Any]) -> None:
        if message["type"] in ("offer", "offer_withdrawn", "assigned", "case_updated"):
            self._last_seq = max(self._last_seq or 0, message["seq"])
        if message["type"] == "offer":
            await socket.send(json.dumps({"type": "accept", "offer_id": message["offer_id"]}))
        elif message["type"] == "assigned":
            await self._advise(message["consult_id"], message["case"]["id"])

    async def _advise(self, consult_id: str, case_id: str) -> None:
        """Advice over REST, retried until it lands (the replica may be gone)."""
        for _ in range(100):
            try:
                response = await self.http.post(
                    f"{self.router_url}/v1/consults/{consult_id}/advice",
                    json={
                        "disposition": "redirect",
                        "pathway": "falls",
                        "advice": "Falls team to visit today.",
                        "safety_netting": "999 if worse.",
                        "confirm_risk_override": True,
                    },
                    headers=support.auth("consultant", self.consultant_id),
                )
            except httpx.HTTPError:
                await asyncio.sleep(0.3)
                continue
            if response.status_code == 200 or (
                # Recorded by an earlier attempt whose answer was lost.
                response.status_code == 409 and response.json()["error"] == "already_advised"
            ):
                self.advised.add(case_id)
                return
            assert response.status_code in (409, 502, 503, 504), response.text
            await asyncio.sleep(0.3)
        raise AssertionError(f"advice for {case_id} never landed")
