"""Advice and where the patient goes, with the risk-override rule; what the crew and
audit are told."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.consult_router.engine import RoutingEngine
from services.shared.clock import ManualClock
from tests.consult_router.conftest import Desk, snapshot
from tests.support import FakePeer, auth

DR_A = auth("consultant", "dr-a")


async def accepted_case(
    desk: Desk, engine: RoutingEngine, clock: ManualClock, **case: Any
) -> tuple[dict[str, Any], str]:
    await desk.consultant("dr-a", ["frailty"])
    sent = snapshot(clock, **case)
    await desk.send_case(sent)
    await engine.run_once()
    [offer] = await desk.offers("dr-a")
    consult_id: str = (await desk.accept("dr-a", offer["offer_id"])).json()["consult_id"]
    return sent, consult_id


async def held_and_offered(
    desk: Desk, engine: RoutingEngine, clock: ManualClock
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two cases: one dr-a holds, one dr-b is being offered."""
    held, _ = await accepted_case(desk, engine, clock)
    await desk.consultant("dr-b", ["frailty"])
    offered = snapshot(clock)
    await desk.send_case(offered)
    await engine.run_once()
    return held, offered


async def reads_audited(fake_peers: FakePeer, router_app: FastAPI) -> list[tuple[str, str, str]]:
    """Every read audit has been told of so far: who, which case, how."""
    await router_app.state.outbox_delivery.deliver_due()
    viewed = fake_peers.of_type("case.viewed")
    return [(v["actor"]["sub"], v["subject_id"], v["data"]["via"]) for v in viewed]


async def advise(http: httpx.AsyncClient, consult_id: str, **body: Any) -> httpx.Response:
    return await http.post(f"/v1/consults/{consult_id}/advice", json=body, headers=DR_A)


class TestAdvice:
    async def test_advice_reaches_the_crew_and_audit_without_its_words(
        self,
        desk: Desk,
        engine: RoutingEngine,
        clock: ManualClock,
        http: httpx.AsyncClient,
        fake_peers: FakePeer,
        router_app: FastAPI,
    ) -> None:
        case, consult_id = await accepted_case(desk, engine, clock)
        response = await advise(
            http, consult_id, disposition="redirect", pathway="falls",
            advice="Falls team visit today", safety_netting="999 if she cannot stand",
        )  # fmt: skip
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["status"], body["disposition"], body["pathway"], body["risk_override"]) == (
            "advised", "redirect", "falls", False,
        )  # fmt: skip
        await router_app.state.outbox_delivery.deliver_due()
        to_crew = [e for e in fake_peers.of_type("consult.advised") if "triage" in e["peer"]]
        to_audit = [e for e in fake_peers.of_type("consult.advised") if "audit" in e["peer"]]
        assert to_crew[0]["data"]["advice"] == "Falls team visit today"
        assert to_crew[0]["data"]["safety_netting"] == "999 if she cannot stand"
        assert to_audit[0]["data"]["advice"] is None
        assert to_audit[0]["data"]["safety_netting"] is None
        assert to_audit[0]["data"]["disposition"] == "redirect"
        assert to_audit[0]["data"]["case_reference"] == case["reference"]
        assert "Falls team" not in str(fake_peers.to("audit"))
        versions = [e["data"]["router_version"] for e in fake_peers.to("triage")]
        assert versions == sorted(versions)
        assert len(set(versions)) == len(versions)

    async def test_a_redirect_needs_a_pathway(
        self, desk: Desk, engine: RoutingEngine, clock: ManualClock, http: httpx.AsyncClient
    ) -> None:
        _, consult_id = await accepted_case(desk, engine, clock)
        response = await advise(http, consult_id, disposition="redirect")
        assert response.status_code == 422

    async def test_risk_flags_demand_a_confirmed_override_unless_conveying(
        self, desk: Desk, engine: RoutingEngine, clock: ManualClock, http: httpx.AsyncClient
    ) -> None:
        _, consult_id = await accepted_case(
            desk, engine, clock, risk_flags=["cannot_walk", "low_spo2"]
        )
        refused = await advise(http, consult_id, disposition="home", safety_netting="call back")
        assert refused.status_code == 409
        assert refused.json()["error"] == "risk_override_required"
        assert refused.json()["risk_flags"] == ["cannot_walk", "low_spo2"]
        confirmed = await advise(
            http,
            consult_id,
            disposition="home",
            safety_netting="call back",
            confirm_risk_override=True,
        )
        assert confirmed.status_code == 200
        assert confirmed.json()["risk_override"] is True

    async def test_conveying_needs_no_override(
        self, desk: Desk, engine: RoutingEngine, clock: ManualClock, http: httpx.AsyncClient
    ) -> None:
        _, consult_id = await accepted_case(desk, engine, clock, risk_flags=["cannot_walk"])
        response = await advise(http, consult_id, disposition="convey_ed")
        assert response.status_code == 200
        assert response.json()["risk_override"] is False

    async def test_advice_is_given_once_by_its_consultant(
        self, desk: Desk, engine: RoutingEngine, clock: ManualClock, http: httpx.AsyncClient
    ) -> None:
        _, consult_id = await accepted_case(desk, engine, clock)
        other = await http.post(
            f"/v1/consults/{consult_id}/advice",
            json={"disposition": "convey_ed"},
            headers=auth("consultant", "dr-x"),
        )
        assert other.status_code == 404
        assert (await advise(http, consult_id, disposition="convey_ed")).status_code == 200
        again = await advise(http, consult_id, disposition="home")
        assert (again.status_code, again.json()["error"]) == (409, "already_advised")

    async def test_a_case_the_crew_cancelled_takes_no_advice(
        self, desk: Desk, engine: RoutingEngine, clock: ManualClock, http: httpx.AsyncClient
    ) -> None:
        case, consult_id = await accepted_case(desk, engine, clock)
        await desk.send_case({**case, "version": 2, "status": "cancelled"})
        told = await desk.log("dr-a")
        assert told[-1][0] == "case_updated"
        assert told[-1][1]["status"] == "cancelled"
        response = await advise(http, consult_id, disposition="convey_ed")
        assert (response.status_code, response.json()["error"]) == (409, "case_cancelled")

    async def test_reading_a_consult_is_audited(
        self,
        desk: Desk,
        engine: RoutingEngine,
        clock: ManualClock,
        http: httpx.AsyncClient,
        fake_peers: FakePeer,
        router_app: FastAPI,
    ) -> None:
        _, consult_id = await accepted_case(desk, engine, clock)
        response = await http.get(f"/v1/consults/{consult_id}", headers=DR_A)
        assert response.status_code == 200
        assert response.json()["case"]["nhs_number"] == "9434765919"
        await router_app.state.outbox_delivery.deliver_due()
        viewed = fake_peers.of_type("case.viewed")
        assert [(v["actor"]["sub"], v["data"]["via"]) for v in viewed] == [
            ("dr-a", "offers"),  # the offer's summary, read to accept it
            ("dr-a", "assigned"),
            ("dr-a", "consult"),
        ]

    async def test_an_update_shown_to_whoever_holds_the_case_is_an_audited_read(
        self,
        desk: Desk,
        engine: RoutingEngine,
        clock: ManualClock,
        fake_peers: FakePeer,
        router_app: FastAPI,
    ) -> None:
        held, offered = await held_and_offered(desk, engine, clock)
        before = len(await reads_audited(fake_peers, router_app))
        await desk.send_case({**held, "version": 2, "priority": 1})
        await desk.send_case({**offered, "version": 2, "priority": 1})
        await desk.send_case({**held, "version": 3, "status": "cancelled"})
        assert [kind for kind, _ in await desk.log("dr-a")][-2:] == ["case_updated"] * 2
        assert [kind for kind, _ in await desk.log("dr-b")][-1] == "case_updated"
        assert (await reads_audited(fake_peers, router_app))[before:] == [
            ("dr-a", held["id"], "updated"),
            ("dr-b", offered["id"], "updated"),
            ("dr-a", held["id"], "updated"),  # the cancellation, with the case as it ended
        ]

    async def test_each_case_a_consultants_state_shows_is_an_audited_read(
        self,
        desk: Desk,
        engine: RoutingEngine,
        clock: ManualClock,
        http: httpx.AsyncClient,
        fake_peers: FakePeer,
        router_app: FastAPI,
    ) -> None:
        held, offered = await held_and_offered(desk, engine, clock)
        before = len(await reads_audited(fake_peers, router_app))
        state = await http.get("/v1/consultant", headers=DR_A)
        assert [c["case"]["id"] for c in state.json()["consults"]] == [held["id"]]
        offers = await http.get("/v1/consultant/offers", headers=auth("consultant", "dr-b"))
        assert [o["case"]["id"] for o in offers.json()] == [offered["id"]]
        assert (await reads_audited(fake_peers, router_app))[before:] == [
            ("dr-a", held["id"], "consultant"),
            ("dr-b", offered["id"], "offers"),
        ]

    @pytest.mark.parametrize("role", ["paramedic", "admin"])
    async def test_only_consultants_advise(
        self,
        desk: Desk,
        engine: RoutingEngine,
        clock: ManualClock,
        http: httpx.AsyncClient,
        role: str,
    ) -> None:
        _, consult_id = await accepted_case(desk, engine, clock)
        response = await http.post(
            f"/v1/consults/{consult_id}/advice",
            json={"disposition": "convey_ed"},
            headers=auth(role, "x"),
        )
        assert response.status_code == 403
