"""consult_router under test: the real app on a real database, its loops driven by hand
(`run_once`) with a clock the test moves; triage_api and audit faked at the httpx edge."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from services.consult_router.app import create_app
from services.consult_router.engine import RoutingEngine
from services.embedded import EmbeddedSettings
from services.shared.clients.peers import PeerDirectory
from services.shared.clock import ManualClock
from services.shared.db.models import ConsultCase, ConsultMessage, ConsultOutbox
from services.shared.db.session import unit_of_work
from services.shared.resources import Resources, open_resources
from tests.support import FakePeer, auth, running_server, service_auth

ADMIN = auth("admin", "rota-admin")


@pytest.fixture
def router_settings(settings: EmbeddedSettings) -> EmbeddedSettings:
    # The test drives the loops itself.
    return settings.model_copy(update={"background_tasks": False})


@pytest.fixture
async def resources(
    router_settings: EmbeddedSettings, clock: ManualClock, fake_peers: FakePeer
) -> AsyncIterator[Resources]:
    async with open_resources(
        router_settings,
        clock=clock,
        peer_transport=fake_peers.transport(),
        peers=PeerDirectory.embedded(),
    ) as built:
        yield built


@pytest.fixture
async def router_app(
    router_settings: EmbeddedSettings, resources: Resources
) -> AsyncIterator[FastAPI]:
    app = create_app(router_settings, resources=resources)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
def app_under_test(router_app: FastAPI) -> FastAPI:
    return router_app


@pytest.fixture
def engine(router_app: FastAPI) -> RoutingEngine:
    found: RoutingEngine = router_app.state.engine
    return found


def snapshot(
    clock: ManualClock,
    *,
    case_id: str | None = None,
    specialty: str = "frailty",
    priority: int = 3,
    version: int = 1,
    status: str = "queued",
    risk_flags: list[str] | None = None,
    created_at: datetime | None = None,
    score: int | None = 3,
) -> dict[str, Any]:
    """A case as triage_api sends it (CaseSnapshot)."""
    moment = created_at or clock.now()
    news2 = None
    if score is not None:
        news2 = {"score": score, "risk": "low", "red_flag": False, "scale": 1,
                 "subscores": {}, "validated": True}  # fmt: skip
    return {
        "id": case_id or str(uuid.uuid4()),
        "reference": f"R-{uuid.uuid4().hex[:4].upper()}-01",
        "version": version,
        "status": status,
        "priority": priority,
        "created_at": moment.isoformat(),
        "updated_at": clock.now().isoformat(),
        "call_category": "C3",
        "callsign": "NE23",
        "presenting_complaint": "fall",
        "requested_specialty": specialty,
        "age_years": 84,
        "sex": "female",
        "nhs_number": "9434765919",
        "news2": news2,
        "risk_flags": risk_flags or [],
        "observations": None,
        "handover": {"format": "ATMIST", "text": "long lie"},
        "proposed_disposition": None,
        "paramedic_id": "crew-ne23",
        "paramedic_name": "NE23",
    }


class Desk:
    """The test's hands: the rota admin, the crew's service, the consultants."""

    def __init__(self, http: httpx.AsyncClient, clock: ManualClock, resources: Resources) -> None:
        self.http = http
        self.clock = clock
        self.resources = resources

    async def consultant(
        self,
        consultant_id: str,
        specialties: list[str],
        *,
        on_shift_for: list[str] | None = None,
        available: bool = True,
        hours: float = 8,
    ) -> None:
        response = await self.http.put(
            f"/v1/consultants/{consultant_id}",
            json={"name": f"Dr {consultant_id}", "grade": "consultant", "specialties": specialties},
            headers=ADMIN,
        )
        assert response.status_code == 200, response.text
        for specialty in specialties if on_shift_for is None else on_shift_for:
            await self.shift(
                consultant_id, specialty, self.clock.now() - timedelta(hours=1), hours=hours
            )
        if available:
            await self.status(consultant_id, "available")

    async def shift(
        self, consultant_id: str, specialty: str, start: datetime, *, hours: float
    ) -> dict[str, Any]:
        response = await self.http.post(
            "/v1/shifts",
            json={
                "consultant_id": consultant_id,
                "specialty": specialty,
                "starts_at": start.isoformat(),
                "ends_at": (start + timedelta(hours=hours)).isoformat(),
            },
            headers=ADMIN,
        )
        assert response.status_code == 201, response.text
        shift: dict[str, Any] = response.json()
        return shift

    async def status(self, consultant_id: str, status: str) -> None:
        response = await self.http.put(
            "/v1/consultant/status",
            json={"status": status},
            headers=auth("consultant", consultant_id),
        )
        assert response.status_code == 200, response.text

    async def send_case(self, *events: dict[str, Any]) -> list[str]:
        batch = []
        for data in events:
            kind = {"queued": "case.submitted", "cancelled": "case.cancelled"}.get(
                data["status"], "case.updated"
            )
            if data["version"] > 1 and data["status"] == "queued":
                kind = "case.updated"
            batch.append({
                "id": uuid.uuid4().hex, "type": kind, "source": "triage_api",
                "occurred_at": self.clock.now().isoformat(), "subject_id": data["id"], "data": data,
            })  # fmt: skip
        response = await self.http.post(
            "/internal/router/events", json={"events": batch}, headers=service_auth("triage_api")
        )
        assert response.status_code == 200, response.text
        return [r["outcome"] for r in response.json()["results"]]

    async def log(self, consultant_id: str) -> list[tuple[str, dict[str, Any]]]:
        """Every message logged for a consultant, in order: what their sockets receive."""
        async with unit_of_work(self.resources.sessionmaker) as session:
            rows = await session.execute(
                select(ConsultMessage.type, ConsultMessage.payload)
                .where(ConsultMessage.consultant_id == consultant_id)
                .order_by(ConsultMessage.seq)
            )
            return [(kind, payload) for kind, payload in rows]

    async def offers(self, consultant_id: str) -> list[dict[str, Any]]:
        response = await self.http.get(
            "/v1/consultant/offers", headers=auth("consultant", consultant_id)
        )
        assert response.status_code == 200, response.text
        offers: list[dict[str, Any]] = response.json()
        return offers

    async def queue(self) -> list[dict[str, Any]]:
        """The open queue's items, as a coordinator's `GET /v1/queue` shows them."""
        response = await self.http.get("/v1/queue", headers=auth("coordinator", "ops"))
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def accept(self, consultant_id: str, offer_id: str) -> httpx.Response:
        return await self.http.post(
            f"/v1/offers/{offer_id}/accept", headers=auth("consultant", consultant_id)
        )

    async def decline(self, consultant_id: str, offer_id: str) -> None:
        response = await self.http.post(
            f"/v1/offers/{offer_id}/decline", json={"reason": "in another call"},
            headers=auth("consultant", consultant_id),
        )  # fmt: skip
        assert response.status_code == 200, response.text


@pytest.fixture
def desk(http: httpx.AsyncClient, clock: ManualClock, resources: Resources) -> Desk:
    return Desk(http, clock, resources)


# Long enough that a socket a test keeps open but quiet is never closed as idle, however
# slowly a loaded machine runs the test; a test of the idle close shortens it for itself.
IDLE_TIMEOUT_SECONDS = 60.0


@pytest.fixture
def idle_timeout() -> float:
    return IDLE_TIMEOUT_SECONDS


@pytest.fixture
def live_settings(settings: EmbeddedSettings, idle_timeout: float) -> EmbeddedSettings:
    return settings.model_copy(update={"websocket_idle_timeout_seconds": idle_timeout})


@pytest.fixture
async def server(live_settings: EmbeddedSettings, resources: Resources) -> AsyncIterator[str]:
    """The router served by uvicorn on 127.0.0.1, for its websockets: its address."""
    async with running_server(create_app(live_settings, resources=resources)) as address:
        yield address


@pytest.fixture
async def live_desk(server: str, clock: ManualClock, resources: Resources) -> AsyncIterator[Desk]:
    async with httpx.AsyncClient(base_url=f"http://{server}") as client:
        yield Desk(client, clock, resources)


# What routing tests read back: a consultant's log, a case's row, what the crew was told.


def kinds(log: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [kind for kind, _ in log]


def reads_the_queue(statement: str) -> bool:
    """The routing queue's read (the open cases, the most urgent first: by the priority
    aged by waiting, a CASE over the creation time)."""
    return "FROM consult_case" in statement and "ORDER BY CASE" in statement


async def case_state(resources: Resources, case_id: str) -> tuple[str, int]:
    async with unit_of_work(resources.sessionmaker) as session:
        kept = await session.get(ConsultCase, case_id)
        assert kept is not None
        return kept.status, kept.router_version


async def statuses_told(resources: Resources, case_id: str) -> list[tuple[str, int]]:
    """The `consult.*` statuses the router has put in its outbox for the case's crew."""
    async with unit_of_work(resources.sessionmaker) as session:
        rows = await session.execute(
            select(ConsultOutbox.payload)
            .where(
                ConsultOutbox.event_type.like("consult.%"),
                ConsultOutbox.destination == "triage_api",
            )
            .order_by(ConsultOutbox.id)
        )
        return [
            (told["type"], told["data"]["router_version"])
            for told in rows.scalars()
            if told["subject_id"] == case_id
        ]


def offered_case(log: list[tuple[str, dict[str, Any]]], index: int = -1) -> str:
    offers = [payload for kind, payload in log if kind == "offer"]
    case_id: str = offers[index]["case"]["id"]
    return case_id
