"""Bad input: a clear 4xx in the envelope, with field paths, nothing stored, never a 500."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from services.shared.db.models import TriageCase, TriageOutbox
from services.shared.db.session import unit_of_work
from services.shared.resources import Resources
from tests.factories import RECOGNISABLE_NHS_NUMBER, case_body, idempotency_key
from tests.support import auth

CREW = auth("paramedic", "crew-ne23")


def with_change(path: str, value: Any) -> dict[str, Any]:
    """A valid body with one field replaced (or removed, for `...`)."""
    body = copy.deepcopy(case_body())
    *parents, last = path.split(".")
    target = body
    for part in parents:
        target = target[part]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return body


async def nothing_stored(resources: Resources) -> bool:
    async with unit_of_work(resources.sessionmaker) as session:
        cases = (await session.execute(select(func.count(TriageCase.id)))).scalar_one()
        events = (await session.execute(select(func.count(TriageOutbox.id)))).scalar_one()
    return cases == 0 and events == 0


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == code
    assert body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


class TestInvalidFields:
    @pytest.mark.parametrize(
        ("path", "value"),
        [
            # wrong types
            ("observations.pulse", "88"),
            ("observations.pulse", 88.5),
            ("observations.on_oxygen", "no"),
            ("observations.temperature", "36.8"),
            ("patient.age_years", 82.5),
            ("incident.callsign", 23),
            ("risk_flags", "cannot_walk"),
            # physiologically impossible
            ("observations.pulse", 900),
            ("observations.spo2", 140),
            ("observations.respiration_rate", 0),
            ("observations.systolic_bp", 500),
            ("observations.temperature", 50.0),
            ("observations.spo2_scale", 3),
            ("patient.age_years", -1),
            ("incident.location.lat", 95.0),
            # unknown vocabulary
            ("incident.call_category", "C9"),
            ("requested_specialty", "dentistry"),
            ("presenting_complaint", "headache"),
            ("observations.consciousness", "X"),
            ("patient.sex", "f"),
            ("proposed_disposition", "taxi"),
            # missing required fields
            ("incident", ...),
            ("incident.call_category", ...),
            ("patient", ...),
            ("requested_specialty", ...),
            # a typo must not be silently dropped
            ("observations.respiratory_rate", 18),
            ("handover.text", "x" * 4001),
            ("handover.format", "SOAP"),
            ("observations.taken_at", "2026-11-22T10:15:00"),
        ],
    )
    async def test_each_is_a_422_naming_the_field(
        self, http: httpx.AsyncClient, resources: Resources, path: str, value: Any
    ) -> None:
        response = await http.post(
            "/v1/cases",
            json=with_change(path, value),
            headers={**CREW, "Idempotency-Key": idempotency_key()},
        )
        body = assert_envelope(response, 422, "validation_error")
        paths = [problem["path"] for problem in body["fields"]]
        assert any(p == path or p.startswith(path + ".") for p in paths), paths
        assert await nothing_stored(resources)

    async def test_an_unknown_risk_flag_names_its_position(
        self, http: httpx.AsyncClient, resources: Resources
    ) -> None:
        response = await http.post(
            "/v1/cases",
            json=with_change("risk_flags", ["cannot_walk", "bad_vibes"]),
            headers={**CREW, "Idempotency-Key": idempotency_key()},
        )
        body = assert_envelope(response, 422, "validation_error")
        assert [p["path"] for p in body["fields"]] == ["risk_flags.1"]
        assert await nothing_stored(resources)

    @pytest.mark.parametrize("number", ["9434765918", "0000000000", "94347659", "943.476.5919"])
    async def test_an_invalid_nhs_number_is_refused_without_repeating_it(
        self, http: httpx.AsyncClient, resources: Resources, number: str
    ) -> None:
        response = await http.post(
            "/v1/cases",
            json=with_change("patient.nhs_number", number),
            headers={**CREW, "Idempotency-Key": idempotency_key()},
        )
        body = assert_envelope(response, 422, "validation_error")
        assert [p["path"] for p in body["fields"]] == ["patient.nhs_number"]
        assert number not in response.text
        assert RECOGNISABLE_NHS_NUMBER not in response.text
        assert await nothing_stored(resources)

    async def test_observations_from_the_future_are_refused(
        self, http: httpx.AsyncClient, resources: Resources
    ) -> None:
        response = await http.post(
            "/v1/cases",
            json=with_change("observations.taken_at", "2030-01-01T00:00:00Z"),
            headers={**CREW, "Idempotency-Key": idempotency_key()},
        )
        body = assert_envelope(response, 422, "validation_error")
        assert body["fields"] == [{"path": "observations.taken_at", "message": "is in the future"}]
        assert await nothing_stored(resources)


class TestMalformedRequests:
    async def test_malformed_json_is_400(
        self, http: httpx.AsyncClient, resources: Resources
    ) -> None:
        response = await http.post(
            "/v1/cases",
            content=b'{"incident": {',
            headers={
                **CREW,
                "Idempotency-Key": idempotency_key(),
                "Content-Type": "application/json",
            },
        )
        assert_envelope(response, 400, "malformed_json")
        assert await nothing_stored(resources)

    @pytest.mark.parametrize("content", [b"[]", b'"case"', b"null", b"42"])
    async def test_a_body_that_is_not_an_object_is_422(
        self, http: httpx.AsyncClient, resources: Resources, content: bytes
    ) -> None:
        response = await http.post(
            "/v1/cases",
            content=content,
            headers={
                **CREW,
                "Idempotency-Key": idempotency_key(),
                "Content-Type": "application/json",
            },
        )
        assert_envelope(response, 422, "validation_error")
        assert await nothing_stored(resources)

    async def test_an_empty_body_is_422(
        self, http: httpx.AsyncClient, resources: Resources
    ) -> None:
        response = await http.post(
            "/v1/cases", headers={**CREW, "Idempotency-Key": idempotency_key()}
        )
        body = assert_envelope(response, 422, "validation_error")
        assert body["fields"][0]["path"] == "body"
        assert await nothing_stored(resources)

    @pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
    async def test_a_body_that_is_not_json_is_415(
        self, http: httpx.AsyncClient, resources: Resources, content_type: str
    ) -> None:
        response = await http.post(
            "/v1/cases",
            content=b"incident=CAD-1",
            headers={**CREW, "Idempotency-Key": idempotency_key(), "Content-Type": content_type},
        )
        assert_envelope(response, 415, "unsupported_media_type")
        assert await nothing_stored(resources)

    async def test_a_body_over_one_mebibyte_is_413_before_it_is_read(
        self, http: httpx.AsyncClient, resources: Resources
    ) -> None:
        huge = case_body()
        huge["handover"]["text"] = "x" * (1024 * 1024)
        response = await http.post(
            "/v1/cases", json=huge, headers={**CREW, "Idempotency-Key": idempotency_key()}
        )
        assert_envelope(response, 413, "payload_too_large")
        assert await nothing_stored(resources)

    async def test_a_chunked_body_over_the_limit_is_413(
        self, http: httpx.AsyncClient, resources: Resources
    ) -> None:
        async def chunks() -> Any:
            for _ in range(20):
                yield b"x" * 65536

        response = await http.post(
            "/v1/cases",
            content=chunks(),
            headers={
                **CREW,
                "Idempotency-Key": idempotency_key(),
                "Content-Type": "application/json",
            },
        )
        assert_envelope(response, 413, "payload_too_large")
        assert await nothing_stored(resources)

    async def test_an_unknown_path_and_a_wrong_method_answer_in_the_envelope(
        self, http: httpx.AsyncClient
    ) -> None:
        assert_envelope(await http.get("/v1/nothing-here", headers=CREW), 404, "not_found")
        assert_envelope(await http.delete("/v1/cases", headers=CREW), 405, "method_not_allowed")

    @pytest.mark.parametrize(
        ("path", "body"),
        [
            ("observations", {"pulse": "fast"}),
            ("cancel", {}),
            ("cancel", {"reason": ""}),
            ("acknowledge", {"followed": False}),
            ("acknowledge", {"followed": "yes"}),
        ],
    )
    async def test_the_other_endpoints_validate_too(
        self, http: httpx.AsyncClient, path: str, body: dict[str, Any]
    ) -> None:
        case = (
            await http.post(
                "/v1/cases",
                json=case_body(),
                headers={**CREW, "Idempotency-Key": idempotency_key()},
            )
        ).json()
        before = (await http.get(f"/v1/cases/{case['id']}/events", headers=CREW)).json()
        response = await http.post(f"/v1/cases/{case['id']}/{path}", json=body, headers=CREW)
        assert_envelope(response, 422, "validation_error")
        after = (await http.get(f"/v1/cases/{case['id']}/events", headers=CREW)).json()
        assert after["items"] == before["items"]

    @pytest.mark.parametrize(
        "query", ["after=-1", "after=abc", "after=99999999999999999999", "limit=0", "limit=100000"]
    )
    async def test_bad_query_parameters_are_422(self, http: httpx.AsyncClient, query: str) -> None:
        case = (
            await http.post(
                "/v1/cases",
                json=case_body(),
                headers={**CREW, "Idempotency-Key": idempotency_key()},
            )
        ).json()
        response = await http.get(f"/v1/cases/{case['id']}/events?{query}", headers=CREW)
        assert_envelope(response, 422, "validation_error")
