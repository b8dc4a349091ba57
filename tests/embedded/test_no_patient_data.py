"""No patient data anywhere it must not be: a case with a recognisable NHS number and
free text goes through the whole embedded flow — submitted, offered, accepted, advised,
acknowledged, read, refused when malformed — and then every service's metrics, every log
record, every error body and the whole audit trail are searched for it."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import httpx
import pytest
from opentelemetry import _logs, metrics, trace

from services.shared.clock import ManualClock
from tests.factories import (
    RECOGNISABLE_HANDOVER,
    RECOGNISABLE_NHS_NUMBER,
    case_body,
    idempotency_key,
)
from tests.support import auth, eventually

ADVICE = "Mrs Zebedee-Quartermaine to see her GP, Dr Pemberton-Oakes, tomorrow"
REFUSAL = "Mrs Zebedee-Quartermaine declined the falls team"
SECRETS = (RECOGNISABLE_NHS_NUMBER, RECOGNISABLE_HANDOVER, ADVICE, REFUSAL, "Zebedee")
CREW = auth("paramedic", "crew-ne23")
CONSULTANT = auth("consultant", "dr-okafor")
ADMIN = auth("admin", "rota-admin")
COORDINATOR = auth("coordinator", "ops-1")


def assert_clean(where: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"patient data in {where}"


async def trail(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    after = 0
    while True:
        page = (
            await http.get(
                "/v1/audit/events", params={"after": after, "limit": 500}, headers=COORDINATOR
            )
        ).json()
        entries += page["events"]
        if page["next_after"] is None:
            return entries
        after = page["next_after"]


async def test_a_recognisable_case_leaves_no_trace_outside_its_own_records(
    http: httpx.AsyncClient, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="reach")
    errors: list[str] = []
    await http.put(
        "/v1/consultants/dr-okafor",
        json={"name": "Dr Okafor", "grade": "consultant", "specialties": ["frailty"]},
        headers=ADMIN,
    )
    await http.post(
        "/v1/shifts",
        json={"consultant_id": "dr-okafor", "specialty": "frailty",
              "starts_at": (clock.now() - timedelta(hours=1)).isoformat(),
              "ends_at": (clock.now() + timedelta(hours=8)).isoformat()},
        headers=ADMIN,
    )  # fmt: skip
    await http.put("/v1/consultant/status", json={"status": "available"}, headers=CONSULTANT)

    # Refused requests carrying the patient's details: the error bodies must not echo them.
    bad = case_body(observations={**case_body()["observations"], "pulse": 900})
    for body in (
        bad,
        {**case_body(), "patient": {"nhs_number": RECOGNISABLE_NHS_NUMBER[:9] + "0"}},
    ):
        response = await http.post(
            "/v1/cases", json=body, headers={**CREW, "Idempotency-Key": idempotency_key()}
        )
        assert response.status_code == 422
        errors.append(response.text)
    response = await http.post(
        "/v1/cases", content=f'{{"nhs": "{RECOGNISABLE_NHS_NUMBER}"', headers={**CREW,
        "Idempotency-Key": idempotency_key(), "Content-Type": "application/json"},
    )  # fmt: skip
    assert response.status_code == 400
    errors.append(response.text)

    response = await http.post(
        "/v1/cases", json=case_body(), headers={**CREW, "Idempotency-Key": idempotency_key()}
    )
    assert response.status_code == 201
    case_id = response.json()["id"]

    async def offered() -> list[dict[str, Any]]:
        offers: list[dict[str, Any]] = (
            await http.get("/v1/consultant/offers", headers=CONSULTANT)
        ).json()
        return offers

    async def any_offer() -> bool:
        return bool(await offered())

    await eventually(any_offer, timeout=10, message="the case was never offered")
    offer_id = (await offered())[0]["offer_id"]
    consult_id = (await http.post(f"/v1/offers/{offer_id}/accept", headers=CONSULTANT)).json()[
        "consult_id"
    ]
    response = await http.post(
        f"/v1/consults/{consult_id}/advice",
        json={"disposition": "redirect", "pathway": "falls", "advice": ADVICE,
              "safety_netting": ADVICE, "confirm_risk_override": True},
        headers=CONSULTANT,
    )  # fmt: skip
    assert response.status_code == 200, response.text

    async def advised() -> bool:
        case = (await http.get(f"/v1/cases/{case_id}", headers=CREW)).json()
        return bool(case["status"] == "advised")

    await eventually(advised, timeout=10, message="the advice never reached the crew")
    response = await http.post(
        f"/v1/cases/{case_id}/acknowledge",
        json={"followed": False, "reason": REFUSAL},
        headers=CREW,
    )
    assert response.status_code == 200, response.text

    async def audited() -> bool:
        kinds = {e["type"] for e in await trail(http)}
        return {"case.submitted", "consult.advised", "case.acknowledged", "case.viewed"} <= kinds

    await eventually(audited, timeout=10, message="the events never reached audit")

    assert_clean("the audit trail", str(await trail(http)))
    assert_clean("/metrics", (await http.get("/metrics")).text)
    for error_body in errors:
        assert_clean("an error body", error_body)
    logged = "\n".join(
        f"{record.getMessage()} {record.args} {record.exc_text or ''}" for record in caplog.records
    )
    assert caplog.records, "nothing was logged: the search proves nothing"
    assert_clean("the logs", logged)
    # The crew's own record does keep what the crew and the consultant wrote.
    case = (await http.get(f"/v1/cases/{case_id}", headers=CREW)).json()
    assert case["advice"]["advice"] == ADVICE


async def test_fastapis_own_telemetry_is_off_in_every_service(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FastAPI's OpenTelemetry bridge asks for each provider on every request while it is
    # on (and, given one, logs validation failures with what the client sent): none is
    # asked for here, by any service's routes, a refused body's included.
    asked: list[str] = []
    for module, getter in (
        (trace, "get_tracer_provider"),
        (metrics, "get_meter_provider"),
        (_logs, "get_logger_provider"),
    ):
        original = getattr(module, getter)

        def recording(*args: Any, _original: Any = original, _name: str = getter) -> Any:
            asked.append(_name)
            return _original(*args)

        monkeypatch.setattr(module, getter, recording)
    body = case_body()
    responses = [
        await http.post(
            "/v1/cases", json=body, headers={**CREW, "Idempotency-Key": idempotency_key()}
        ),
        await http.post(
            "/v1/cases",
            json={**body, "patient": {**body["patient"], "age_years": "old"}},
            headers={**CREW, "Idempotency-Key": idempotency_key()},
        ),
        await http.put(
            "/v1/consultants/dr-okafor",
            json={"name": "Dr Okafor", "grade": "consultant", "specialties": ["frailty"]},
            headers=ADMIN,
        ),
        await http.get("/v1/audit/events", headers=COORDINATOR),
        await http.get("/healthz"),
    ]
    assert [response.status_code for response in responses] == [201, 422, 200, 200, 200]
    assert asked == []
