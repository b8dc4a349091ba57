"""The whole consult on the embedded default, over a real uvicorn on 127.0.0.1: a crew
posts a case; the consultant connected to the dashboard's socket is offered it, accepts
and advises; the crew's stream shows every step, in order, with the advice."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from websockets.asyncio.client import ClientConnection, connect

from services.embedded import EmbeddedSettings, create_app
from services.shared.clock import ManualClock
from services.shared.db.engine import create_engine
from tests.factories import NORMAL_OBSERVATIONS, case_body, idempotency_key
from tests.support import auth, eventually, running_server, token

CREW = auth("paramedic", "crew-ne23")
CONSULTANT = auth("consultant", "dr-okafor")


@pytest.fixture
async def server(settings: EmbeddedSettings, clock: ManualClock) -> AsyncIterator[str]:
    async with running_server(create_app(settings, clock=clock)) as address:
        yield address


@pytest.fixture
async def http(server: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://{server}", timeout=10) as client:
        yield client


async def next_of(socket: ClientConnection, kind: str) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = json.loads(await socket.recv())
        if message["type"] == kind:
            return message


async def put_on_call(http: httpx.AsyncClient, clock: ManualClock) -> str:
    """The consultant on call for frailty now; their shift's id."""
    admin = auth("admin", "rota-admin")
    response = await http.put(
        "/v1/consultants/dr-okafor",
        json={"name": "Dr Okafor", "grade": "consultant", "specialties": ["frailty"]},
        headers=admin,
    )
    assert response.status_code == 200, response.text
    response = await http.post(
        "/v1/shifts",
        json={
            "consultant_id": "dr-okafor",
            "specialty": "frailty",
            "starts_at": (clock.now() - timedelta(hours=1)).isoformat(),
            "ends_at": (clock.now() + timedelta(hours=8)).isoformat(),
        },
        headers=admin,
    )
    assert response.status_code == 201, response.text
    shift_id: str = response.json()["id"]
    return shift_id


async def test_a_case_goes_from_the_crew_to_a_consultant_and_the_advice_comes_back(
    server: str, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    await put_on_call(http, clock)
    async with connect(f"ws://{server}/v1/consultant/stream") as desk:
        await desk.send(json.dumps({"type": "hello", "token": token("consultant", "dr-okafor")}))
        await next_of(desk, "welcome")
        await desk.send(json.dumps({"type": "status", "status": "available"}))
        await next_of(desk, "status")
        body = case_body(observations=NORMAL_OBSERVATIONS, risk_flags=[])
        response = await http.post(
            "/v1/cases", json=body, headers={**CREW, "Idempotency-Key": idempotency_key()}
        )
        assert response.status_code == 201, response.text
        case = response.json()
        async with connect(f"ws://{server}/v1/cases/{case['id']}/stream") as crew:
            await crew.send(json.dumps({"type": "hello", "token": token("paramedic", "crew-ne23")}))
            offer = await next_of(desk, "offer")
            assert offer["case"]["reference"] == case["reference"]
            await desk.send(json.dumps({"type": "accept", "offer_id": offer["offer_id"]}))
            assigned = await next_of(desk, "assigned")
            assert assigned["case"]["id"] == case["id"]
            response = await http.post(
                f"/v1/consults/{assigned['consult_id']}/advice",
                json={
                    "disposition": "redirect",
                    "pathway": "falls",
                    "advice": "Falls team visit today; analgesia as needed.",
                    "safety_netting": "999 if she cannot weight-bear.",
                },
                headers=CONSULTANT,
            )
            assert response.status_code == 200, response.text
            seen: list[dict[str, Any]] = []
            while not seen or seen[-1]["type"] != "advised":
                seen.append(json.loads(await crew.recv()))
    kinds = [event["type"] for event in seen]
    assert kinds == ["queued", "offered", "accepted", "advised"]
    assert [event["seq"] for event in seen] == sorted(event["seq"] for event in seen)
    advised = seen[-1]["data"]
    assert advised["disposition"] == "redirect"
    assert advised["pathway"] == "falls"
    assert advised["advice"] == "Falls team visit today; analgesia as needed."
    final = (await http.get(f"/v1/cases/{case['id']}", headers=CREW)).json()
    assert final["status"] == "advised"
    assert final["assigned_consultant"] == {"id": "dr-okafor", "name": "Dr Okafor"}


async def submit(http: httpx.AsyncClient) -> str:
    response = await http.post(
        "/v1/cases", json=case_body(), headers={**CREW, "Idempotency-Key": idempotency_key()}
    )
    assert response.status_code == 201, response.text
    case_id: str = response.json()["id"]
    return case_id


def made_in_order(*ids: str) -> bool:
    """Whether each id is a time-ordered one (version 7) made after the one before."""
    parsed = [uuid.UUID(each) for each in ids]
    return all(each.version == 7 for each in parsed) and parsed == sorted(parsed)


async def test_the_ids_reach_makes_sort_by_when_they_were_made(
    server: str, http: httpx.AsyncClient, clock: ManualClock, settings: EmbeddedSettings
) -> None:
    """Rows land on the newest leaf of each index they are keyed in (`services.shared.ids`):
    shifts, dashboards' connections, cases, offers, consults, and the events that carry
    them between the services and into the audit trail."""
    shift = await put_on_call(http, clock)
    async with connect(f"ws://{server}/v1/consultant/stream") as desk:
        await desk.send(json.dumps({"type": "hello", "token": token("consultant", "dr-okafor")}))
        await next_of(desk, "welcome")
        await desk.send(json.dumps({"type": "status", "status": "available"}))
        await next_of(desk, "status")
        case = await submit(http)
        offer = await next_of(desk, "offer")
        await desk.send(json.dumps({"type": "accept", "offer_id": offer["offer_id"]}))
        consult = (await next_of(desk, "assigned"))["consult_id"]
        next_case = await submit(http)
        rows = await stored_ids(settings, "SELECT id FROM consult_connection")
    assert made_in_order(shift, *rows, case, offer["offer_id"], consult, next_case)

    # Every event: the services' outboxes, and the trail (with audit's own entry for the
    # query below), once the consult's acceptance and the next case have reached it.
    async def in_the_trail() -> bool:
        response = await http.get(
            "/v1/audit/events", params={"limit": 500}, headers=auth("admin", "auditor")
        )
        seen = {(each["type"], each["subject_id"]) for each in response.json()["events"]}
        return {("consult.accepted", case), ("case.submitted", next_case)} <= seen

    await eventually(in_the_trail)
    events = await stored_ids(
        settings,
        "SELECT event_id FROM triage_outbox UNION ALL SELECT event_id FROM consult_outbox "
        "UNION ALL SELECT event_id FROM audit_entry",
    )
    assert len(events) > 6
    assert all(uuid.UUID(event_id).version == 7 for event_id in events)


async def stored_ids(settings: EmbeddedSettings, query: str) -> list[str]:
    assert settings.database_url is not None
    engine = create_engine(settings.database_url)
    try:
        async with engine.connect() as connection:
            return list(await connection.scalars(text(query)))
    finally:
        await engine.dispose()
