"""The embedded default: every service in one process, on the public paths they have
when split, with their own lifespans run by the parent."""

from __future__ import annotations

import httpx

from services.embedded import EmbeddedApp
from tests.factories import case_body, idempotency_key
from tests.support import auth

CREW = auth("paramedic", "crew-ne23")


class TestComposition:
    async def test_every_child_lifespan_ran_on_shared_resources(
        self, embedded: EmbeddedApp
    ) -> None:
        assert set(embedded.children) >= {"triage_api"}
        for child in embedded.children.values():
            assert child.state.resources is embedded.parent.state.resources

    async def test_a_service_path_reaches_its_service(self, http: httpx.AsyncClient) -> None:
        response = await http.post(
            "/v1/cases", json=case_body(), headers={**CREW, "Idempotency-Key": idempotency_key()}
        )
        assert response.status_code == 201
        case_id = response.json()["id"]
        assert (await http.get(f"/v1/cases/{case_id}", headers=CREW)).status_code == 200

    async def test_health_readiness_and_one_metrics_page(self, http: httpx.AsyncClient) -> None:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await http.get("/readyz")).json() == {"status": "ok"}
        await http.post(
            "/v1/cases", json=case_body(), headers={**CREW, "Idempotency-Key": idempotency_key()}
        )
        metrics = (await http.get("/metrics")).text
        assert (
            'reach_http_requests_total{method="POST",route="/v1/cases",service="triage_api",'
            'status="201"} 1.0' in metrics
        )
        assert 'reach_cases_submitted_total{call_category="C2",specialty="frailty"} 1.0' in metrics
        assert 'reach_outbox_pending{service="triage_api"}' in metrics

    async def test_an_unknown_path_is_a_404_in_the_envelope(self, http: httpx.AsyncClient) -> None:
        response = await http.get("/v1/nowhere")
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"
        assert response.json()["request_id"] == response.headers["x-request-id"]

    async def test_prefixes_match_whole_path_segments(self, http: httpx.AsyncClient) -> None:
        response = await http.get("/v1/casesX", headers=CREW)
        assert response.status_code == 404


class TestRequestIds:
    async def test_a_sane_incoming_id_is_kept_and_echoed(self, http: httpx.AsyncClient) -> None:
        response = await http.get("/healthz", headers={"X-Request-ID": "crew-ne23-req-0001"})
        assert response.headers["x-request-id"] == "crew-ne23-req-0001"

    async def test_an_unsafe_incoming_id_is_replaced(self, http: httpx.AsyncClient) -> None:
        response = await http.get("/healthz", headers={"X-Request-ID": "9434765919 Mrs Smith"})
        assert response.headers["x-request-id"] != "9434765919 Mrs Smith"
        assert len(response.headers["x-request-id"]) == 32
