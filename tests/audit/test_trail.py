"""Ingest and the trail: each event recorded once however often and in whatever order it
arrives; identifiers and vocabulary only; who looked at a case in one query; only
coordinators and admins read it."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from services.audit import trail
from services.shared.clock import ManualClock
from services.shared.db.session import unit_of_work
from services.shared.resources import Resources
from services.shared.schemas.events import Event
from tests.audit.conftest import COORDINATOR, Feed, event
from tests.factories import RECOGNISABLE_HANDOVER, RECOGNISABLE_NHS_NUMBER
from tests.support import auth


class TestIngest:
    async def test_a_redelivered_event_is_recorded_once(
        self, feed: Feed, clock: ManualClock
    ) -> None:
        submitted = event("case.submitted", "case-1", clock.now(), reference="R-1")
        assert await feed.post(submitted) == ["accepted"]
        assert await feed.post(submitted, submitted) == ["duplicate", "duplicate"]
        entries = await feed.trail(subject_id="case-1")
        assert [e["event_id"] for e in entries] == [submitted["id"]]

    async def test_a_batch_is_chained_in_the_order_it_arrived(
        self, feed: Feed, clock: ManualClock
    ) -> None:
        batch = [
            event("case.submitted", f"case-b{n}", clock.now(), reference=f"R-B{n}")
            for n in range(6)
        ]
        assert await feed.post(batch[0]) == ["accepted"]
        assert await feed.post(*batch[1:], batch[2]) == ["accepted"] * 5 + ["duplicate"]
        entries = await feed.trail()
        assert [e["event_id"] for e in entries] == [e["id"] for e in batch]
        assert [e["seq"] for e in entries] == list(range(1, 7))
        assert (await feed.verify(full=True))["ok"] is True

    async def test_events_out_of_order_across_sources_are_each_recorded_once(
        self, feed: Feed, clock: ManualClock
    ) -> None:
        created = clock.now()
        advised = event(
            "consult.advised", "case-2", created + timedelta(minutes=5),
            router_version=3, at=(created + timedelta(minutes=5)).isoformat(),
            disposition="home", case_created_at=created.isoformat(), specialty="frailty",
        )  # fmt: skip
        submitted = event("case.submitted", "case-2", created, created_at=created.isoformat())
        # The router's report arrives first, the crew's service's later, then both again.
        assert await feed.post(advised, source="consult_router") == ["accepted"]
        assert await feed.post(submitted) == ["accepted"]
        assert await feed.post(submitted, advised) == ["duplicate", "duplicate"]
        entries = await feed.trail(subject_id="case-2")
        assert sorted(e["event_id"] for e in entries) == sorted([submitted["id"], advised["id"]])
        assert (await feed.verify(full=True))["ok"] is True

    async def test_only_allowed_fields_enter_the_trail(
        self, feed: Feed, clock: ManualClock
    ) -> None:
        leaky = event(
            "case.submitted", "case-3", clock.now(),
            reference="R-3", specialty="frailty", risk_flags=["cannot_walk"],
            nhs_number=RECOGNISABLE_NHS_NUMBER, handover={"text": RECOGNISABLE_HANDOVER},
            presenting_complaint="fall",
        )  # fmt: skip
        advised = event(
            "consult.advised", "case-3", clock.now(), router_version=2,
            at=clock.now().isoformat(), disposition="redirect", pathway="falls",
            advice=RECOGNISABLE_HANDOVER, safety_netting=RECOGNISABLE_HANDOVER,
        )  # fmt: skip
        await feed.post(leaky, advised)
        entries = await feed.trail(subject_id="case-3")
        assert entries[0]["details"] == {
            "reference": "R-3", "specialty": "frailty", "risk_flags": ["cannot_walk"],
            "presenting_complaint": "fall",
        }  # fmt: skip
        assert entries[1]["details"] == {
            "router_version": 2, "disposition": "redirect", "pathway": "falls",
        }  # fmt: skip
        text = str(entries)
        assert RECOGNISABLE_NHS_NUMBER not in text
        assert "Zebedee" not in text


class TestWhoLooked:
    async def test_every_read_of_a_case_is_one_query_away(
        self, feed: Feed, clock: ManualClock
    ) -> None:
        await feed.post(event("case.submitted", "case-4", clock.now()))
        for reader, role, via in (
            ("crew-ne23", "paramedic", "get"),
            ("dr-a", "consultant", "assigned"),
            ("ops-1", "coordinator", "list"),
        ):
            clock.advance(timedelta(minutes=1))
            await feed.post(
                event("case.viewed", "case-4", clock.now(), actor=(reader, role), via=via,
                      reference="R-4"),
            )  # fmt: skip
        views = await feed.trail(subject_id="case-4", type="case.viewed")
        assert [(v["actor"]["sub"], v["actor"]["role"], v["details"]["via"]) for v in views] == [
            ("crew-ne23", "paramedic", "get"),
            ("dr-a", "consultant", "assigned"),
            ("ops-1", "coordinator", "list"),
        ]

    async def test_reading_the_trail_is_itself_recorded(self, feed: Feed) -> None:
        await feed.trail(subject_id="case-5")
        queries = await feed.trail(type="audit.queried")
        first = queries[0]
        assert (first["subject_id"], first["actor"]["sub"]) == ("case-5", "ops-1")

    async def test_pages_follow_on_from_each_other(self, feed: Feed, clock: ManualClock) -> None:
        for number in range(5):
            await feed.post(event("case.submitted", f"page-{number}", clock.now()))
        first = await feed.http.get(
            "/v1/audit/events", params={"limit": 3, "type": "case.submitted"}, headers=COORDINATOR
        )
        body = first.json()
        assert [e["subject_id"] for e in body["events"]] == ["page-0", "page-1", "page-2"]
        rest = await feed.trail(type="case.submitted", after=body["next_after"])
        assert [e["subject_id"] for e in rest] == ["page-3", "page-4"]


class TestAccess:
    @pytest.mark.parametrize(
        "path", ["/v1/audit/events", "/v1/audit/verify", "/v1/reports/redirection"]
    )
    async def test_only_coordinators_and_admins_read_the_trail(
        self, http: httpx.AsyncClient, path: str
    ) -> None:
        assert (await http.get(path)).status_code == 401
        for role in ("paramedic", "consultant"):
            response = await http.get(path, headers=auth(role, "someone"))
            assert response.status_code == 403
            assert response.json()["error"] == "forbidden"
        for role in ("coordinator", "admin"):
            assert (await http.get(path, headers=auth(role, "someone"))).status_code == 200

    async def test_bad_filters_are_refused_clearly(self, http: httpx.AsyncClient) -> None:
        for params in (
            {"after": "-1"}, {"after": "99999999999999999999"}, {"limit": "0"}, {"limit": "501"},
            {"type": "DROP TABLE"},
        ):  # fmt: skip
            response = await http.get("/v1/audit/events", params=params, headers=COORDINATOR)
            assert response.status_code == 422, params
            assert response.json()["error"] == "validation_error"

    async def test_events_without_a_service_token_are_refused(
        self, http: httpx.AsyncClient, clock: ManualClock
    ) -> None:
        body = {"events": [event("case.submitted", "case-6", clock.now())]}
        response = await http.post("/internal/audit/events", json=body, headers=COORDINATOR)
        assert response.status_code == 401


class TestAppendUndone:
    async def test_an_append_undone_with_its_savepoint_is_not_built_on(
        self, resources: Resources, feed: Feed, clock: ManualClock
    ) -> None:
        """The inbox undoes a batch's savepoint when one of its events is refused, then
        handles the events one by one in the same transaction: the next append must
        take up from the head as stored, not as the undone append left it in memory."""

        def new_entry(case_id: str) -> trail.NewEntry:
            raw = event("case.submitted", case_id, clock.now())
            return trail.NewEntry.of(Event.model_validate(raw))

        before, undone, after = new_entry("c-1"), new_entry("c-2"), new_entry("c-3")
        async with unit_of_work(resources.sessionmaker) as session:
            await trail.append(session, before, recorded_at=clock.now())
            # Held, the head's object stays in the session (it is weakly kept otherwise).
            head = await trail.locked_head(session)
            savepoint = await session.begin_nested()
            await trail.append(session, undone, recorded_at=clock.now())
            await savepoint.rollback()
            appended = await trail.append(session, after, recorded_at=clock.now())
        assert (appended.seq, head.seq) == (2, 2)
        entries = await feed.trail()
        assert [e["event_id"] for e in entries] == [before.event_id, after.event_id]
        assert (await feed.verify(full=True))["ok"] is True
