"""audit under test: the real app on a real database (SQLite and PostgreSQL), events
posted to its internal endpoint as the other services' outboxes post them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.audit.app import create_app
from services.embedded import EmbeddedSettings
from services.shared.clock import ManualClock
from services.shared.resources import Resources, open_resources
from tests.support import auth, service_auth

COORDINATOR = auth("coordinator", "ops-1")


@pytest.fixture
def audit_settings(settings: EmbeddedSettings) -> EmbeddedSettings:
    return settings.model_copy(update={"background_tasks": False})


@pytest.fixture
async def resources(
    audit_settings: EmbeddedSettings, clock: ManualClock
) -> AsyncIterator[Resources]:
    async with open_resources(audit_settings, clock=clock) as built:
        yield built


@pytest.fixture
async def audit_app(
    audit_settings: EmbeddedSettings, resources: Resources
) -> AsyncIterator[FastAPI]:
    app = create_app(audit_settings, resources=resources)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
def app_under_test(audit_app: FastAPI) -> FastAPI:
    return audit_app


def event(
    kind: str,
    case_id: str,
    when: datetime,
    *,
    source: str | None = None,
    actor: tuple[str, str] | None = ("crew-ne23", "paramedic"),
    **data: Any,
) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "type": kind,
        "source": source or ("triage_api" if kind.startswith("case.") else "consult_router"),
        "occurred_at": when.isoformat(),
        "subject_id": case_id,
        "actor": {"sub": actor[0], "role": actor[1]} if actor else None,
        "data": data,
    }


class Feed:
    """Posts events to audit as a peer's outbox would, and reads the results."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        # While holding, case outcomes are kept back, to be posted together by `release`.
        self.held: list[dict[str, Any]] | None = None

    async def release(self) -> None:
        """Post every held event in one batch, newest case first and each case's events
        backwards: the order a backlog delivered out of order could have."""
        held, self.held = self.held or [], None
        assert set(await self.post(*reversed(held))) == {"accepted"}

    async def post(self, *events: dict[str, Any], source: str = "triage_api") -> list[str]:
        response = await self.http.post(
            "/internal/audit/events", json={"events": list(events)}, headers=service_auth(source)
        )
        assert response.status_code == 200, response.text
        return [result["outcome"] for result in response.json()["results"]]

    async def trail(self, **params: Any) -> list[dict[str, Any]]:
        response = await self.http.get("/v1/audit/events", params=params, headers=COORDINATOR)
        assert response.status_code == 200, response.text
        entries: list[dict[str, Any]] = response.json()["events"]
        return entries

    async def verify(self, *, full: bool = False) -> dict[str, Any]:
        response = await self.http.get(
            "/v1/audit/verify", params={"full": str(full).lower()}, headers=COORDINATOR
        )
        assert response.status_code == 200, response.text
        verdict: dict[str, Any] = response.json()
        return verdict

    async def case_outcome(
        self,
        case_id: str,
        created: datetime,
        *,
        specialty: str = "frailty",
        call_category: str = "C3",
        accepted_after: float | None = None,
        advised_after: float | None = None,
        disposition: str | None = None,
        pathway: str | None = None,
        cancelled_after: float | None = None,
    ) -> None:
        """A case's life as the two services report it."""
        events = [
            event("case.submitted", case_id, created, reference="R-TEST-01",
                  specialty=specialty, call_category=call_category,
                  created_at=created.isoformat(), status="queued"),
        ]  # fmt: skip
        facts = {"specialty": specialty, "call_category": call_category,
                 "case_created_at": created.isoformat(), "case_reference": "R-TEST-01"}  # fmt: skip
        consultant = {"id": "dr-a", "name": "Dr A"}
        if accepted_after is not None:
            accepted = created + timedelta(seconds=accepted_after)
            events.append(event(
                "consult.accepted", case_id, accepted, actor=("dr-a", "consultant"),
                router_version=2, at=accepted.isoformat(), accepted_at=accepted.isoformat(),
                consultant=consultant, **facts,
            ))  # fmt: skip
        if advised_after is not None:
            assert accepted_after is not None
            advised = created + timedelta(seconds=advised_after)
            events.append(event(
                "consult.advised", case_id, advised, actor=("dr-a", "consultant"),
                router_version=3, at=advised.isoformat(),
                accepted_at=(created + timedelta(seconds=accepted_after)).isoformat(),
                disposition=disposition, pathway=pathway, consultant=consultant, **facts,
            ))  # fmt: skip
        if cancelled_after is not None:
            cancelled = created + timedelta(seconds=cancelled_after)
            events.append(event("case.cancelled", case_id, cancelled, status="cancelled",
                                created_at=created.isoformat(), specialty=specialty,
                                call_category=call_category))  # fmt: skip
        if self.held is not None:
            self.held.extend(events)
            return
        assert set(await self.post(*events)) == {"accepted"}


@pytest.fixture
def feed(http: httpx.AsyncClient) -> Feed:
    return Feed(http)
