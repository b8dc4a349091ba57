"""After submission: repeat observations, cancellation, acknowledgement, and the router's
news turned into the crew's stream."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest

from services.shared.clock import ManualClock
from services.shared.resources import Resources
from tests.factories import NORMAL_OBSERVATIONS, case_body, idempotency_key
from tests.support import auth, service_auth, statements_sent
from tests.triage_api.test_cases import outbox_payloads

CREW = auth("paramedic", "crew-ne23")
OTHER_CREW = auth("paramedic", "crew-ne99")
CONSULTANT = {"id": "dr-okafor", "name": "Dr Okafor"}


async def new_case(http: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    response = await http.post(
        "/v1/cases",
        json=case_body(**overrides),
        headers={**CREW, "Idempotency-Key": idempotency_key()},
    )
    assert response.status_code == 201
    case: dict[str, Any] = response.json()
    return case


async def stream(http: httpx.AsyncClient, case_id: str, after: int = 0) -> list[tuple[str, Any]]:
    page = (await http.get(f"/v1/cases/{case_id}/events?after={after}", headers=CREW)).json()
    return [(event["type"], event["data"]) for event in page["items"]]


def router_event(
    event_type: str, case_id: str, version: int, clock: ManualClock, **data: Any
) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "type": event_type,
        "source": "consult_router",
        "occurred_at": clock.now().isoformat(),
        "subject_id": case_id,
        "actor": None,
        "data": {"router_version": version, "at": clock.now().isoformat(), **data},
    }


async def deliver(http: httpx.AsyncClient, *events: dict[str, Any]) -> list[dict[str, Any]]:
    response = await http.post(
        "/internal/triage/events", json={"events": list(events)}, headers=service_auth()
    )
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


class TestRepeatObservations:
    async def test_news2_flags_and_priority_are_recomputed(
        self, http: httpx.AsyncClient, resources: Resources
    ) -> None:
        case = await new_case(http, observations=NORMAL_OBSERVATIONS, risk_flags=[])
        assert (case["news2"]["score"], case["priority"]) == (0, 2)
        worse = {**NORMAL_OBSERVATIONS, "respiration_rate": 26, "systolic_bp": 88, "pulse": 125}
        response = await http.post(f"/v1/cases/{case['id']}/observations", json=worse, headers=CREW)
        assert response.status_code == 200
        updated = response.json()
        assert updated["news2"]["score"] == 8
        assert updated["news2"]["risk"] == "high"
        assert updated["priority"] == 1
        assert updated["risk_flags"] == ["abnormal_sbp", "breathlessness"]
        assert updated["observations"]["respiration_rate"] == 26
        kinds = [kind for kind, _ in await stream(http, case["id"])]
        assert kinds == ["queued", "observations_updated"]
        updates = [e for e in await outbox_payloads(resources) if e["type"] == "case.updated"]
        assert [e["destination"] for e in updates] == ["consult_router", "audit"]
        assert updates[0]["data"]["version"] == 2
        assert updates[0]["data"]["priority"] == 1

    async def test_only_the_crew_that_asked_records_observations(
        self, http: httpx.AsyncClient
    ) -> None:
        case = await new_case(http)
        other = await http.post(
            f"/v1/cases/{case['id']}/observations", json=NORMAL_OBSERVATIONS, headers=OTHER_CREW
        )
        assert other.status_code == 404
        coordinator = await http.post(
            f"/v1/cases/{case['id']}/observations",
            json=NORMAL_OBSERVATIONS,
            headers=auth("coordinator", "ops"),
        )
        assert coordinator.status_code == 403


class TestCancel:
    async def test_a_cancelled_case_tells_the_router_and_the_stream(
        self, http: httpx.AsyncClient, resources: Resources
    ) -> None:
        case = await new_case(http)
        response = await http.post(
            f"/v1/cases/{case['id']}/cancel", json={"reason": "patient declined"}, headers=CREW
        )
        assert response.status_code == 200
        assert response.json()["status"] == "cancelled"
        assert [kind for kind, _ in await stream(http, case["id"])] == ["queued", "cancelled"]
        cancelled = [e for e in await outbox_payloads(resources) if e["type"] == "case.cancelled"]
        assert [e["destination"] for e in cancelled] == ["consult_router", "audit"]
        assert "patient declined" not in str(cancelled[1])

    async def test_a_cancellations_stream_event_rides_with_its_wake_up(
        self, http: httpx.AsyncClient, resources: Resources
    ) -> None:
        """A change's event on the crew's stream is written at the commit: on PostgreSQL
        in the statement that writes the change's outbox rows and wakes the stream, on
        SQLite by an insert of its own. Either way it reads back next in the stream."""
        case = await new_case(http)
        with statements_sent(
            resources.engine, lambda sql: "INSERT INTO triage_case_event" in sql
        ) as writes:
            response = await http.post(
                f"/v1/cases/{case['id']}/cancel", json={"reason": "no longer needed"}, headers=CREW
            )
        assert response.status_code == 200
        [written] = writes
        riding = "pg_notify" in written and "INSERT INTO triage_outbox" in written
        assert riding == (resources.engine.dialect.name == "postgresql")
        page = (await http.get(f"/v1/cases/{case['id']}/events", headers=CREW)).json()
        assert [(event["seq"], event["type"]) for event in page["items"]] == [
            (1, "queued"), (2, "cancelled")
        ]  # fmt: skip

    async def test_cancelling_twice_changes_nothing_more(self, http: httpx.AsyncClient) -> None:
        case = await new_case(http)
        for _ in range(2):
            response = await http.post(
                f"/v1/cases/{case['id']}/cancel", json={"reason": "no longer needed"}, headers=CREW
            )
            assert response.status_code == 200
        assert [kind for kind, _ in await stream(http, case["id"])] == ["queued", "cancelled"]

    async def test_a_case_with_advice_cannot_be_cancelled(
        self, http: httpx.AsyncClient, clock: ManualClock
    ) -> None:
        case = await new_case(http)
        await deliver(
            http,
            router_event(
                "consult.advised", case["id"], 1, clock, disposition="home", consultant=CONSULTANT
            ),
        )
        response = await http.post(
            f"/v1/cases/{case['id']}/cancel", json={"reason": "changed mind"}, headers=CREW
        )
        assert response.status_code == 409
        assert response.json()["error"] == "invalid_state"


class TestAcknowledge:
    async def test_nothing_to_acknowledge_before_advice(self, http: httpx.AsyncClient) -> None:
        case = await new_case(http)
        response = await http.post(
            f"/v1/cases/{case['id']}/acknowledge", json={"followed": True}, headers=CREW
        )
        assert response.status_code == 409
        assert response.json()["error"] == "no_advice_yet"

    async def test_acknowledging_advice_closes_the_case(
        self, http: httpx.AsyncClient, resources: Resources, clock: ManualClock
    ) -> None:
        case = await new_case(http)
        await deliver(
            http,
            router_event(
                "consult.advised", case["id"], 1, clock,
                disposition="redirect", pathway="sdec", advice="SDEC today", consultant=CONSULTANT,
            ),
        )  # fmt: skip
        response = await http.post(
            f"/v1/cases/{case['id']}/acknowledge",
            json={"followed": False, "reason": "family took her to ED"},
            headers=CREW,
        )
        assert response.status_code == 200
        closed = response.json()
        assert closed["status"] == "closed"
        assert closed["acknowledgement"] == {"followed": False, "reason": "family took her to ED"}
        assert (await stream(http, case["id"]))[-1] == ("closed", {"followed": False})
        acks = [e for e in await outbox_payloads(resources) if e["type"] == "case.acknowledged"]
        assert acks[1]["destination"] == "audit"
        assert acks[1]["data"]["followed"] is False
        assert "family" not in str(acks[1])
        again = await http.post(
            f"/v1/cases/{case['id']}/acknowledge", json={"followed": True}, headers=CREW
        )
        assert again.status_code == 409


class TestRouterNews:
    async def test_offered_accepted_advised_reach_the_crew_in_order(
        self, http: httpx.AsyncClient, clock: ManualClock
    ) -> None:
        case = await new_case(http)
        results = await deliver(
            http,
            router_event("consult.offered", case["id"], 1, clock, specialty="frailty"),
            router_event("consult.accepted", case["id"], 2, clock, consultant=CONSULTANT),
            router_event(
                "consult.advised", case["id"], 3, clock, consultant=CONSULTANT,
                disposition="redirect", pathway="falls", advice="Falls team visit",
                safety_netting="999 if worse",
            ),
        )  # fmt: skip
        assert [r["outcome"] for r in results] == ["accepted"] * 3
        events = await stream(http, case["id"])
        assert [kind for kind, _ in events] == ["queued", "offered", "accepted", "advised"]
        assert events[2][1] == {"consultant": CONSULTANT}
        assert events[3][1]["advice"] == "Falls team visit"
        assert events[3][1]["safety_netting"] == "999 if worse"
        read = (await http.get(f"/v1/cases/{case['id']}", headers=CREW)).json()
        assert read["status"] == "advised"
        assert read["assigned_consultant"] == CONSULTANT
        assert read["advice"]["pathway"] == "falls"

    async def test_a_redelivered_event_changes_nothing(
        self, http: httpx.AsyncClient, clock: ManualClock
    ) -> None:
        case = await new_case(http)
        offered = router_event("consult.offered", case["id"], 1, clock)
        first = await deliver(http, offered)
        second = await deliver(http, offered)
        assert (first[0]["outcome"], second[0]["outcome"]) == ("accepted", "duplicate")
        assert [kind for kind, _ in await stream(http, case["id"])] == ["queued", "offered"]

    async def test_a_late_older_status_never_rewinds_the_stream(
        self, http: httpx.AsyncClient, clock: ManualClock
    ) -> None:
        case = await new_case(http)
        await deliver(
            http, router_event("consult.accepted", case["id"], 2, clock, consultant=CONSULTANT)
        )
        await deliver(http, router_event("consult.offered", case["id"], 1, clock))
        assert [kind for kind, _ in await stream(http, case["id"])] == ["queued", "accepted"]

    async def test_escalation_is_shown_without_changing_status(
        self, http: httpx.AsyncClient, clock: ManualClock
    ) -> None:
        case = await new_case(http)
        clock.advance(timedelta(minutes=2))
        await deliver(
            http,
            router_event(
                "consult.escalated",
                case["id"],
                1,
                clock,
                reason="not_accepted",
                waited_seconds=120.0,
            ),
        )
        events = await stream(http, case["id"])
        assert events[-1] == ("escalated", {"reason": "not_accepted", "waited_seconds": 120.0})
        read = (await http.get(f"/v1/cases/{case['id']}", headers=CREW)).json()
        assert read["status"] == "queued"

    async def test_news_of_a_cancelled_case_is_taken_but_ignored(
        self, http: httpx.AsyncClient, clock: ManualClock
    ) -> None:
        case = await new_case(http)
        await http.post(f"/v1/cases/{case['id']}/cancel", json={"reason": "gone"}, headers=CREW)
        results = await deliver(
            http, router_event("consult.accepted", case["id"], 1, clock, consultant=CONSULTANT)
        )
        assert results[0]["outcome"] == "accepted"
        assert [kind for kind, _ in await stream(http, case["id"])] == ["queued", "cancelled"]

    async def test_an_unknown_case_or_a_malformed_status_is_rejected(
        self, http: httpx.AsyncClient, clock: ManualClock
    ) -> None:
        case = await new_case(http)
        bad_status = router_event("consult.offered", case["id"], 1, clock)
        bad_status["data"]["router_version"] = "one"
        not_an_event = {"id": "x", "type": "nonsense"}
        results = await deliver(
            http,
            router_event("consult.offered", "no-such-case", 1, clock),
            bad_status,
            not_an_event,
        )
        assert [r["outcome"] for r in results] == ["rejected", "rejected", "rejected"]
        assert [r["detail"] for r in results[:2]] == ["unknown_case", "bad_event"]
        assert [kind for kind, _ in await stream(http, case["id"])] == ["queued"]

    @pytest.mark.parametrize(
        "headers",
        [{}, auth("paramedic", "crew-ne23"), {"Authorization": "Bearer forged"}],
    )
    async def test_only_a_service_may_post_events(
        self, http: httpx.AsyncClient, headers: dict[str, str]
    ) -> None:
        response = await http.post("/internal/triage/events", json={"events": []}, headers=headers)
        assert response.status_code == 401
