"""Text the database cannot store (a NUL, a lone surrogate), sent to the paramedic API:
a 422 naming the field (or a 404 for a path), in the envelope, never the text, nothing
stored. PostgreSQL refuses such text outright, so the PostgreSQL half is the one that
answered 500 before."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from websockets.asyncio.client import connect

from services.embedded import EmbeddedSettings
from services.shared.clock import ManualClock
from services.shared.resources import Resources
from services.shared.storable_text import NUL_MESSAGE
from services.triage_api.app import create_app
from tests.factories import (
    NUL_TEXT,
    UNSTORABLE_WAYS,
    UNSTORABLE_WORDS,
    case_body,
    idempotency_key,
    json_content,
)
from tests.support import auth, running_server, token
from tests.triage_api.test_bad_input import CREW, assert_envelope, nothing_stored, with_change
from tests.triage_api.test_lifecycle import deliver, new_case, router_event
from tests.triage_api.test_stream import close_code, next_message

JSON = {"Content-Type": "application/json"}
TEXT_FIELDS = ["handover.text", "incident.callsign", "incident.cad_reference", "patient.nhs_number"]


def refused(response: httpx.Response, *paths: str) -> None:
    """A 422 naming exactly `paths`, in the envelope, without the text."""
    body = assert_envelope(response, 422, "validation_error")
    assert [problem["path"] for problem in body["fields"]] == list(paths)
    for word in UNSTORABLE_WORDS:
        assert word not in response.text


async def post_case(http: httpx.AsyncClient, body: Any, *, raw_surrogates: bool) -> httpx.Response:
    return await http.post(
        "/v1/cases",
        content=json_content(body, raw_surrogates=raw_surrogates),
        headers={**CREW, **JSON, "Idempotency-Key": idempotency_key()},
    )


async def events_of(http: httpx.AsyncClient, case_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (
        await http.get(f"/v1/cases/{case_id}/events", headers=CREW)
    ).json()["items"]
    return items


class TestSubmission:
    @pytest.mark.parametrize("way", UNSTORABLE_WAYS)
    @pytest.mark.parametrize("path", TEXT_FIELDS)
    async def test_a_text_field_that_cannot_be_stored_is_a_422_naming_it(
        self, http: httpx.AsyncClient, resources: Resources, path: str, way: str
    ) -> None:
        text, raw_surrogates = UNSTORABLE_WAYS[way]
        response = await post_case(http, with_change(path, text), raw_surrogates=raw_surrogates)
        refused(response, path)
        assert await nothing_stored(resources)

    async def test_every_such_field_is_named(
        self, http: httpx.AsyncClient, resources: Resources
    ) -> None:
        body = with_change("handover.text", NUL_TEXT)
        body["incident"]["callsign"] = NUL_TEXT
        response = await post_case(http, body, raw_surrogates=False)
        refused(response, "incident.callsign", "handover.text")
        assert await nothing_stored(resources)

    async def test_a_field_name_that_cannot_be_stored_is_named_by_its_object(
        self, http: httpx.AsyncClient, resources: Resources
    ) -> None:
        body = case_body()
        body["incident"][NUL_TEXT] = "x"
        refused(await post_case(http, body, raw_surrogates=False), "incident")
        assert await nothing_stored(resources)

    async def test_a_utf16_body_is_looked_at_too(
        self, http: httpx.AsyncClient, resources: Resources
    ) -> None:
        content = json.dumps(with_change("handover.text", NUL_TEXT)).encode("utf-16")
        response = await http.post(
            "/v1/cases",
            content=content,
            headers={**CREW, **JSON, "Idempotency-Key": idempotency_key()},
        )
        refused(response, "handover.text")
        assert await nothing_stored(resources)

    async def test_an_escaped_backslash_before_u0000_is_ordinary_text(
        self, http: httpx.AsyncClient
    ) -> None:
        text = "saw C:\\u0000 on the monitor"
        response = await post_case(http, with_change("handover.text", text), raw_surrogates=False)
        assert response.status_code == 201, response.text
        case = (await http.get(f"/v1/cases/{response.json()['id']}", headers=CREW)).json()
        assert case["handover"]["text"] == text

    async def test_no_crew_can_fail_another_crews_case_in_a_shared_batch(
        self, http: httpx.AsyncClient, resources: Resources, caplog: pytest.LogCaptureFixture
    ) -> None:
        # Submissions that arrive together are written in one transaction (GroupCommit):
        # an unstorable case among them would fail it for all and send each back alone.
        async def submit(crew: str, body: dict[str, Any]) -> httpx.Response:
            headers = {**auth("paramedic", crew), **JSON, "Idempotency-Key": idempotency_key()}
            return await http.post("/v1/cases", content=json_content(body), headers=headers)

        bodies = [(f"crew-{n}", case_body()) for n in range(6)]
        bodies.insert(3, ("crew-bad", with_change("handover.text", NUL_TEXT)))
        with caplog.at_level(logging.INFO, logger="reach.db.group_commit"):
            responses = await asyncio.gather(*(submit(crew, body) for crew, body in bodies))
        statuses = [response.status_code for response in responses]
        assert statuses == [201, 201, 201, 422, 201, 201, 201]
        assert [r for r in caplog.records if r.name == "reach.db.group_commit"] == []


class TestAfterSubmission:
    @pytest.mark.parametrize("way", UNSTORABLE_WAYS)
    async def test_a_cancellation_reason_that_cannot_be_stored_changes_nothing(
        self, http: httpx.AsyncClient, way: str
    ) -> None:
        text, raw_surrogates = UNSTORABLE_WAYS[way]
        case = await new_case(http)
        before = await events_of(http, case["id"])
        response = await http.post(
            f"/v1/cases/{case['id']}/cancel",
            content=json_content({"reason": text}, raw_surrogates=raw_surrogates),
            headers={**CREW, **JSON},
        )
        refused(response, "reason")
        assert await events_of(http, case["id"]) == before
        assert (await http.get(f"/v1/cases/{case['id']}", headers=CREW)).json()["status"] == (
            "queued"
        )

    async def test_an_acknowledgement_reason_that_cannot_be_stored_changes_nothing(
        self, http: httpx.AsyncClient, clock: ManualClock
    ) -> None:
        case = await new_case(http)
        await deliver(
            http,
            router_event("consult.advised", case["id"], 1, clock, disposition="convey_ed",
                         consultant={"id": "dr-okafor", "name": "Dr Okafor"}),
        )  # fmt: skip
        before = await events_of(http, case["id"])
        response = await http.post(
            f"/v1/cases/{case['id']}/acknowledge",
            content=json_content({"followed": False, "reason": NUL_TEXT}),
            headers={**CREW, **JSON},
        )
        refused(response, "reason")
        assert await events_of(http, case["id"]) == before
        after = (await http.get(f"/v1/cases/{case['id']}", headers=CREW)).json()
        assert (after["status"], after["acknowledgement"]) == ("advised", None)


class TestUrls:
    @pytest.mark.parametrize(
        ("method", "path", "body"),
        [
            ("GET", "/v1/cases/case%00id", None),
            ("GET", "/v1/cases/case%00id/events", None),
            ("POST", "/v1/cases/case%00id/cancel", {"reason": "no longer needed"}),
            ("POST", "/v1/cases/case%00id/observations", {"pulse": 80}),
            ("POST", "/v1/cases/case%00id/acknowledge", {"followed": True}),
        ],
    )
    async def test_a_case_id_holding_a_nul_is_no_case(
        self, http: httpx.AsyncClient, method: str, path: str, body: dict[str, Any] | None
    ) -> None:
        response = await http.request(method, path, json=body, headers=CREW)
        assert_envelope(response, 404, "not_found")

    @pytest.mark.parametrize(
        ("query", "named"),
        [("cursor=Marchetti%00Blackwood", "query.cursor"), ("limit=2%00", "query.limit")],
    )
    async def test_a_query_parameter_holding_a_nul_is_a_422_naming_it(
        self, http: httpx.AsyncClient, query: str, named: str
    ) -> None:
        response = await http.get(f"/v1/cases?{query}", headers=CREW)
        refused(response, named)
        assert response.json()["fields"][0]["message"] == NUL_MESSAGE

    async def test_a_cursor_that_decodes_to_a_nul_is_not_one_we_gave_out(
        self, http: httpx.AsyncClient, clock: ManualClock
    ) -> None:
        forged = json.dumps([clock.now().isoformat(), NUL_TEXT]).encode()
        cursor = base64.urlsafe_b64encode(forged).decode().rstrip("=")
        response = await http.get("/v1/cases", params={"cursor": cursor}, headers=CREW)
        assert_envelope(response, 400, "bad_cursor")


@pytest.fixture
async def server(settings: EmbeddedSettings, resources: Resources) -> AsyncIterator[str]:
    app: FastAPI = create_app(settings, resources=resources)
    async with running_server(app) as address:
        yield address


class TestStream:
    async def test_a_case_id_holding_a_nul_closes_as_no_case(self, server: str) -> None:
        async with connect(f"ws://{server}/v1/cases/case%00id/stream") as socket:
            await socket.send(
                json.dumps({"type": "hello", "token": token("paramedic", "crew-ne23")})
            )
            assert await close_code(socket) == 4404

    async def test_a_message_holding_a_nul_is_answered_and_the_stream_goes_on(
        self, server: str
    ) -> None:
        async with httpx.AsyncClient(base_url=f"http://{server}") as client:
            case = await new_case(client)
        async with connect(f"ws://{server}/v1/cases/{case['id']}/stream") as socket:
            await socket.send(
                json.dumps({"type": "hello", "token": token("paramedic", "crew-ne23")})
            )
            assert (await next_message(socket))["type"] == "queued"
            await socket.send(json.dumps({"type": "ping", "note": NUL_TEXT}))
            error = await next_message(socket)
            assert (error["type"], error["error"]) == ("error", "bad_message")
            assert error["fields"] == [{"path": "note", "message": NUL_MESSAGE}]
            assert not any(word in json.dumps(error) for word in UNSTORABLE_WORDS)
            await socket.send(json.dumps({"type": "ping"}))
            assert (await next_message(socket))["type"] == "pong"
