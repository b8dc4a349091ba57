"""Text the database cannot store (a NUL, a lone surrogate), sent to the router: the
rota, offers, advice, the consultants' socket and the crews' service's events. A 422
naming the field (a 404 for a path; an `error` message on the socket; `rejected` for an
event), never the text, and nothing changed."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from services.consult_router.engine import RoutingEngine
from services.shared.clock import ManualClock
from services.shared.storable_text import NUL_MESSAGE
from tests.consult_router.conftest import ADMIN, Desk, case_state, snapshot
from tests.consult_router.test_advice import DR_A, accepted_case
from tests.consult_router.test_stream import hello, receive_type
from tests.factories import NUL_TEXT, UNSTORABLE_WAYS, UNSTORABLE_WORDS, json_content
from tests.support import service_auth
from tests.triage_api.test_bad_input import assert_envelope

JSON = {"Content-Type": "application/json"}


def refused(response: httpx.Response, *paths: str) -> None:
    """A 422 naming exactly `paths`, in the envelope, without the text."""
    body = assert_envelope(response, 422, "validation_error")
    assert [problem["path"] for problem in body["fields"]] == list(paths)
    for word in UNSTORABLE_WORDS:
        assert word not in response.text


def send(body: Any, way: str) -> bytes:
    text, raw_surrogates = UNSTORABLE_WAYS[way]
    return json_content(body(text), raw_surrogates=raw_surrogates)


async def offered(desk: Desk, engine: RoutingEngine, clock: ManualClock) -> dict[str, Any]:
    await desk.consultant("dr-a", ["frailty"])
    await desk.send_case(snapshot(clock))
    await engine.run_once()
    [offer] = await desk.offers("dr-a")
    return offer


class TestRota:
    @pytest.mark.parametrize("way", UNSTORABLE_WAYS)
    @pytest.mark.parametrize("field", ["name", "grade"])
    async def test_a_consultant_whose_text_cannot_be_stored_is_not_added(
        self, http: httpx.AsyncClient, field: str, way: str
    ) -> None:
        def body(text: str) -> dict[str, Any]:
            return {"name": "Dr X", "grade": "consultant", "specialties": ["frailty"], field: text}

        response = await http.put("/v1/consultants/dr-x", content=send(body, way),
                                  headers={**ADMIN, **JSON})  # fmt: skip
        refused(response, field)
        assert (await http.get("/v1/consultants", headers=ADMIN)).json() == []

    async def test_a_consultant_id_holding_a_nul_is_a_422_naming_it(
        self, http: httpx.AsyncClient
    ) -> None:
        response = await http.put(
            "/v1/consultants/dr%00x",
            json={"name": "Dr X", "grade": "consultant", "specialties": ["frailty"]},
            headers=ADMIN,
        )
        refused(response, "path.consultant_id")
        assert (await http.get("/v1/consultants", headers=ADMIN)).json() == []

    @pytest.mark.parametrize("way", UNSTORABLE_WAYS)
    async def test_a_shift_for_a_consultant_id_that_cannot_be_stored_is_refused(
        self, http: httpx.AsyncClient, desk: Desk, clock: ManualClock, way: str
    ) -> None:
        await desk.consultant("dr-a", ["frailty"], on_shift_for=[], available=False)

        def body(text: str) -> dict[str, Any]:
            return {"consultant_id": f"dr-a{text}", "specialty": "frailty",
                    "starts_at": clock.now().isoformat(),
                    "ends_at": (clock.now() + timedelta(hours=8)).isoformat()}  # fmt: skip

        response = await http.post("/v1/shifts", content=send(body, way),
                                   headers={**ADMIN, **JSON})  # fmt: skip
        refused(response, "consultant_id")
        assert (await http.get("/v1/shifts", headers=ADMIN)).json() == []

    @pytest.mark.parametrize(
        ("query", "named"),
        [("specialty=frailty%00", "query.specialty"), ("specialty=frailty&at=2026%00", "query.at")],
    )
    async def test_a_query_parameter_holding_a_nul_is_a_422_naming_it(
        self, http: httpx.AsyncClient, query: str, named: str
    ) -> None:
        refused(await http.get(f"/v1/oncall?{query}", headers=ADMIN), named)


class TestOffersAndAdvice:
    @pytest.mark.parametrize("way", UNSTORABLE_WAYS)
    async def test_a_decline_whose_reason_cannot_be_stored_leaves_the_offer_open(
        self, http: httpx.AsyncClient, desk: Desk, engine: RoutingEngine, clock: ManualClock,
        way: str,
    ) -> None:  # fmt: skip
        offer = await offered(desk, engine, clock)
        response = await http.post(
            f"/v1/offers/{offer['offer_id']}/decline",
            content=send(lambda text: {"reason": text}, way),
            headers={**DR_A, **JSON},
        )
        refused(response, "reason")
        assert [o["offer_id"] for o in await desk.offers("dr-a")] == [offer["offer_id"]]

    @pytest.mark.parametrize("way", UNSTORABLE_WAYS)
    @pytest.mark.parametrize("field", ["advice", "safety_netting"])
    async def test_advice_that_cannot_be_stored_is_not_recorded(
        self, http: httpx.AsyncClient, desk: Desk, engine: RoutingEngine, clock: ManualClock,
        field: str, way: str,
    ) -> None:  # fmt: skip
        case, consult_id = await accepted_case(desk, engine, clock)
        before = await case_state(desk.resources, case["id"])
        response = await http.post(
            f"/v1/consults/{consult_id}/advice",
            content=send(lambda text: {"disposition": "convey_ed", field: text}, way),
            headers={**DR_A, **JSON},
        )
        refused(response, field)
        consult = (await http.get(f"/v1/consults/{consult_id}", headers=DR_A)).json()
        assert (consult["status"], consult["advice"]) == ("accepted", None)
        assert await case_state(desk.resources, case["id"]) == before

    @pytest.mark.parametrize(
        ("method", "path", "body"),
        [
            ("POST", "/v1/offers/offer%00id/accept", None),
            ("POST", "/v1/offers/offer%00id/decline", {}),
            ("POST", "/v1/queue/case%00id/claim", None),
            ("GET", "/v1/consults/consult%00id", None),
            ("POST", "/v1/consults/consult%00id/advice", {"disposition": "convey_ed"}),
        ],
    )
    async def test_an_id_holding_a_nul_is_nothing_there_is(
        self, http: httpx.AsyncClient, method: str, path: str, body: dict[str, Any] | None
    ) -> None:
        response = await http.request(method, path, json=body, headers=DR_A)
        assert_envelope(response, 404, "not_found")

    async def test_a_shift_id_holding_a_nul_is_no_shift(self, http: httpx.AsyncClient) -> None:
        assert_envelope(await http.delete("/v1/shifts/shift%00id", headers=ADMIN), 404, "not_found")


class TestCaseNews:
    @pytest.mark.parametrize("way", UNSTORABLE_WAYS)
    async def test_a_case_that_cannot_be_stored_is_rejected_alone(
        self, http: httpx.AsyncClient, desk: Desk, clock: ManualClock, way: str
    ) -> None:
        text, raw_surrogates = UNSTORABLE_WAYS[way]
        good, bad, other = snapshot(clock), snapshot(clock), snapshot(clock)
        bad["handover"]["text"] = text
        events = [
            {"id": uuid.uuid4().hex, "type": "case.submitted", "source": "triage_api",
             "occurred_at": clock.now().isoformat(), "subject_id": case["id"], "data": case}
            for case in (good, bad, other)
        ]  # fmt: skip
        response = await http.post(
            "/internal/router/events",
            content=json_content({"events": events}, raw_surrogates=raw_surrogates),
            headers={**service_auth("triage_api"), **JSON},
        )
        assert response.status_code == 200, response.text
        outcomes = [(r["outcome"], r["detail"]) for r in response.json()["results"]]
        assert outcomes == [("accepted", None), ("rejected", "unstorable_text"), ("accepted", None)]
        queue = (await http.get("/v1/queue", headers=DR_A)).json()["items"]
        assert sorted(item["case_id"] for item in queue) == sorted([good["id"], other["id"]])


async def said_no(socket: ClientConnection, message: dict[str, Any], path: str) -> None:
    """The socket answers `message` with an error naming `path`, without its text."""
    await socket.send(json.dumps(message))
    error = await receive_type(socket, "error")
    assert error["error"] == "bad_message"
    assert error["fields"] == [{"path": path, "message": NUL_MESSAGE}]
    assert not any(word in json.dumps(error) for word in UNSTORABLE_WORDS)


class TestDashboardSocket:
    async def test_messages_holding_a_nul_change_nothing_and_the_socket_lives_on(
        self, server: str, live_desk: Desk, clock: ManualClock
    ) -> None:
        await live_desk.consultant("dr-a", ["frailty"])
        socket, _ = await hello(server, "dr-a")
        async with socket:
            await live_desk.send_case(snapshot(clock))
            offer = await receive_type(socket, "offer")
            offer_id = offer["offer_id"]
            await said_no(socket, {"type": "accept", "offer_id": offer_id + NUL_TEXT}, "offer_id")
            await said_no(socket, {"type": "decline", "offer_id": offer_id, "reason": NUL_TEXT},
                          "reason")  # fmt: skip
            await said_no(socket, {"type": "status", "status": "away", "note": NUL_TEXT}, "note")
            assert [o["offer_id"] for o in await live_desk.offers("dr-a")] == [offer_id]
            consultants = (await live_desk.http.get("/v1/consultants", headers=ADMIN)).json()
            assert consultants[0]["status"] == "available"
            await socket.send(json.dumps({"type": "ping"}))
            assert (await receive_type(socket, "pong"))["type"] == "pong"
