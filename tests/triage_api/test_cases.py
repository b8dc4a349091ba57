"""Submitting and reading cases: NEWS2, flags, priority, idempotency, visibility."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, func, select

from services.shared.db.models import (
    TriageCase,
    TriageCaseEvent,
    TriageObservation,
    TriageOutbox,
)
from services.shared.db.session import unit_of_work
from services.shared.domain.reference import REFERENCE_PATTERN
from services.shared.resources import Resources
from tests.factories import (
    RECOGNISABLE_HANDOVER,
    RECOGNISABLE_NHS_NUMBER,
    case_body,
    idempotency_key,
)
from tests.support import auth, eventually, statements_sent

CREW = auth("paramedic", "crew-ne23")
OTHER_CREW = auth("paramedic", "crew-ne99")


async def submit(
    http: httpx.AsyncClient, body: dict[str, Any] | None = None, *, key: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:  # fmt: skip
    return await http.post(
        "/v1/cases",
        json=body or case_body(),
        headers={**(headers or CREW), "Idempotency-Key": key or idempotency_key()},
    )


async def count(resources: Resources, model: Any) -> int:
    async with unit_of_work(resources.sessionmaker) as session:
        return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


async def outbox_payloads(resources: Resources) -> list[dict[str, Any]]:
    async with unit_of_work(resources.sessionmaker) as session:
        rows = await session.execute(
            select(TriageOutbox.destination, TriageOutbox.payload).order_by(TriageOutbox.id)
        )
        return [{"destination": dest, **payload} for dest, payload in rows]


class TestSubmit:
    async def test_a_case_is_stored_scored_and_queued(self, http: httpx.AsyncClient) -> None:
        response = await submit(http)
        assert response.status_code == 201
        case = response.json()
        assert REFERENCE_PATTERN.match(case["reference"])
        assert case["status"] == "queued"
        assert case["news2"]["score"] == 5
        assert case["news2"]["risk"] == "medium"
        assert case["news2"]["red_flag"] is False
        assert case["news2"]["subscores"]["respiration_rate"] == 2
        assert case["news2"]["validated"] is True
        assert case["priority"] == 2
        assert case["risk_flags"] == ["cannot_walk"]
        assert case["requested_specialty"] == "frailty"
        assert case["assigned_consultant"] is None
        assert case["advice"] is None
        assert case["created_at"].endswith("Z") or "+00:00" in case["created_at"]
        assert response.headers["x-request-id"]

    async def test_derived_flags_join_the_reported_ones(self, http: httpx.AsyncClient) -> None:
        body = case_body()
        body["observations"] |= {"consciousness": "V", "systolic_bp": 95}
        case = (await submit(http, body)).json()
        assert case["reported_risk_flags"] == ["cannot_walk"]
        assert sorted(case["risk_flags"]) == [
            "abnormal_sbp",
            "cannot_walk",
            "reduced_consciousness",
        ]
        assert case["news2"]["red_flag"] is True

    async def test_a_partial_observation_set_gives_no_score(self, http: httpx.AsyncClient) -> None:
        case = (await submit(http, case_body(observations={"pulse": 80, "spo2": 96}))).json()
        assert case["news2"] is None
        assert case["priority"] == 2  # C2 still counts

    @pytest.mark.parametrize(
        ("patient", "complaint"),
        [
            ({"age_years": 15, "sex": "male"}, "fall"),
            ({"age_years": 30, "sex": "female"}, "pregnancy"),
        ],
    )
    async def test_outside_news2_population_is_marked_not_validated(
        self, http: httpx.AsyncClient, patient: dict[str, Any], complaint: str
    ) -> None:
        body = case_body(patient=patient, presenting_complaint=complaint)
        case = (await submit(http, body)).json()
        assert case["news2"]["validated"] is False

    async def test_nhs_number_is_stored_without_its_grouping(self, http: httpx.AsyncClient) -> None:
        body = case_body(patient={"age_years": 82, "sex": "female", "nhs_number": "943 476 5919"})
        case = (await submit(http, body)).json()
        assert case["patient"]["nhs_number"] == "9434765919"

    async def test_the_router_gets_the_case_and_audit_only_identifiers(
        self, http: httpx.AsyncClient, resources: Resources
    ) -> None:
        case = (await submit(http)).json()
        events = await outbox_payloads(resources)
        assert [(e["destination"], e["type"]) for e in events] == [
            ("consult_router", "case.submitted"),
            ("audit", "case.submitted"),
        ]
        to_router, to_audit = events
        assert to_router["id"] == to_audit["id"]
        assert to_router["data"]["nhs_number"] == RECOGNISABLE_NHS_NUMBER
        assert to_router["data"]["version"] == 1
        assert to_audit["data"]["reference"] == case["reference"]
        assert to_audit["actor"] == {"sub": "crew-ne23", "role": "paramedic"}
        flat = str(to_audit)
        assert RECOGNISABLE_NHS_NUMBER not in flat
        assert RECOGNISABLE_HANDOVER not in flat

    async def test_the_crew_stream_starts_with_queued(self, http: httpx.AsyncClient) -> None:
        case = (await submit(http)).json()
        events = (await http.get(f"/v1/cases/{case['id']}/events", headers=CREW)).json()
        assert [(e["seq"], e["type"]) for e in events["items"]] == [(1, "queued")]
        assert events["last_seq"] == 1

    async def test_submissions_are_counted_by_specialty_and_category(
        self, http: httpx.AsyncClient, resources: Resources
    ) -> None:
        await submit(http)
        await submit(http)
        labels = {"specialty": "frailty", "call_category": "C2"}
        assert resources.registry.get_sample_value("reach_cases_submitted_total", labels) == 2


@contextlib.contextmanager
def listening(resources: Resources, **hooks: Callable[..., None]) -> Iterator[None]:
    """The engine's events (`commit`, `before_cursor_execute`...) hooked while the block
    runs."""
    engine = resources.engine.sync_engine
    for name, hook in hooks.items():
        event.listen(engine, name, hook)
    try:
        yield
    finally:
        for name, hook in hooks.items():
            event.remove(engine, name, hook)


def _is_the_batch(statement: str) -> bool:
    """A PostgreSQL batch's one statement, the new cases riding in it."""
    return statement.lstrip().startswith("WITH") and "INSERT INTO triage_case " in statement


def _writes_a_case(statement: str) -> bool:
    return "INSERT INTO triage_case " in statement


def _writes_first_rows(statement: str) -> bool:
    return (
        "INSERT INTO triage_observation" in statement
        or "INSERT INTO triage_case_event" in statement
    )


class TestSubmittedTogether:
    """Submissions that arrive together are written in one transaction; each must come out
    exactly as if it had been alone."""

    async def test_each_of_a_burst_is_stored_whole(
        self, http: httpx.AsyncClient, resources: Resources
    ) -> None:
        bodies = [case_body(requested_specialty=s) for s in ["frailty", "mental_health"] * 6]
        keys = [idempotency_key() for _ in bodies]
        responses = await asyncio.gather(
            *(submit(http, body, key=key) for body, key in zip(bodies, keys, strict=True))
        )
        assert [r.status_code for r in responses] == [201] * 12
        cases = [r.json() for r in responses]
        assert [c["requested_specialty"] for c in cases] == [
            b["requested_specialty"] for b in bodies
        ]
        assert len({c["id"] for c in cases}) == len({c["reference"] for c in cases}) == 12
        assert await count(resources, TriageCase) == 12
        assert await count(resources, TriageObservation) == 12
        events = await outbox_payloads(resources)
        assert sorted(e["subject_id"] for e in events) == sorted([c["id"] for c in cases] * 2)
        for case in cases:
            stream = (await http.get(f"/v1/cases/{case['id']}/events", headers=CREW)).json()
            assert [(e["seq"], e["type"]) for e in stream["items"]] == [(1, "queued")]
        counted = resources.registry.get_sample_value(
            "reach_cases_submitted_total", {"specialty": "mental_health", "call_category": "C2"}
        )
        assert counted == 6
        # A retry of any of them is a replay, as for a case stored alone.
        again = await submit(http, bodies[3], key=keys[3])
        assert again.status_code == 200
        assert again.json()["id"] == cases[3]["id"]

    async def test_a_burst_s_first_rows_ride_with_its_outbox_and_read_back_as_given(
        self, http: httpx.AsyncClient, resources: Resources
    ) -> None:
        """Each case's first observation set and stream event are written at the commit:
        on PostgreSQL inside the statement that writes the outbox and wakes its delivery,
        on SQLite with the outbox's insert. Either way they read back as given, a partial
        set's missing score (`news2: null`) stored as the case row stores it."""
        partial = {k: v for k, v in case_body()["observations"].items() if k != "temperature"}
        bodies = [case_body(), case_body(observations=partial), case_body(observations=None)] * 3
        with statements_sent(resources.engine, _writes_first_rows) as writes:
            responses = await asyncio.gather(*(submit(http, body) for body in bodies))
        assert [r.status_code for r in responses] == [201] * 9
        cases = {r.json()["id"]: r.json() for r in responses}
        alone = [s for s in writes if s.lstrip().startswith("INSERT INTO triage_")]
        if resources.engine.dialect.name == "postgresql":
            assert alone == []
            assert writes
            assert all("pg_notify" in s and "INSERT INTO triage_outbox" in s for s in writes)
        else:
            assert alone
        async with unit_of_work(resources.sessionmaker) as session:
            observed = (
                await session.execute(
                    select(
                        TriageObservation.case_id,
                        TriageObservation.values,
                        TriageObservation.news2,
                        TriageObservation.news2.is_(None),
                        TriageCase.news2.is_(None),
                    ).join(TriageCase, TriageCase.id == TriageObservation.case_id)
                )
            ).all()
            streams = (
                await session.execute(select(TriageCaseEvent).order_by(TriageCaseEvent.case_id))
            ).scalars()
            firsts = [(e.case_id, e.seq, e.type, e.data) for e in streams]
        assert len(observed) == 6
        for case_id, values, news2, stored_null, case_stored_null in observed:
            case = cases[case_id]
            assert {k: v for k, v in values.items() if v is not None and k != "taken_at"} == {
                k: v for k, v in case["observations"].items() if v is not None and k != "taken_at"
            }
            assert news2 == case["news2"]
            assert stored_null == case_stored_null
        assert sum(news2 is None for _, _, news2, _, _ in observed) == 3
        assert firsts == sorted(
            (case_id, 1, "queued", {"status": "queued", "priority": case["priority"],
                                    "news2": case["news2"]})
            for case_id, case in cases.items()
        )  # fmt: skip

    async def test_a_batch_is_one_statement_and_a_transaction_by_itself_on_postgresql(
        self, http: httpx.AsyncClient, resources: Resources
    ) -> None:
        """The cases, their first rows, their outbox rows and the delivery's wake-up go in
        one statement, which leaves no transaction open on its connection (no BEGIN was
        sent before it, and no COMMIT is to follow): PostgreSQL commits it by itself."""
        if resources.engine.dialect.name == "sqlite":
            pytest.skip("SQLite's batch is an ordinary transaction: it has no round trips")
        writes: list[tuple[str, bool]] = []

        def record(connection: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
            if _writes_a_case(statement):
                driver = connection.connection.driver_connection
                writes.append((statement, driver.is_in_transaction()))

        with listening(resources, after_cursor_execute=record):
            response = await submit(http)
        assert response.status_code == 201
        [(statement, in_a_transaction)] = writes
        for part in (
            "INSERT INTO triage_case ",
            "INSERT INTO triage_case_event ",
            "INSERT INTO triage_observation ",
            "INSERT INTO triage_outbox ",
            "pg_notify",
        ):
            assert part in statement, part  # fmt: skip
        assert not in_a_transaction
        assert await count(resources, TriageCase) == 1
        assert await count(resources, TriageOutbox) == 2

    async def test_a_burst_mixing_new_cases_and_a_reused_key(
        self, http: httpx.AsyncClient, resources: Resources
    ) -> None:
        first = await submit(http, key="reused-key-0001")
        burst = [submit(http) for _ in range(5)] + [
            submit(http, key="reused-key-0001"),
            submit(http, case_body(requested_specialty="mental_health"), key="reused-key-0001"),
        ]
        responses = await asyncio.gather(*burst)
        assert [r.status_code for r in responses] == [201] * 5 + [200, 409]
        assert responses[5].json()["id"] == first.json()["id"]
        assert responses[6].json()["error"] == "idempotency_key_reused"
        assert await count(resources, TriageCase) == 6
        assert await count(resources, TriageOutbox) == 12


class TestIdempotency:
    async def test_a_retry_replays_the_case_and_creates_nothing(
        self, http: httpx.AsyncClient, resources: Resources
    ) -> None:
        key = idempotency_key()
        first = await submit(http, key=key)
        retry = await submit(http, key=key)
        assert first.status_code == 201
        assert retry.status_code == 200
        assert retry.headers["idempotent-replayed"] == "true"
        assert "idempotent-replayed" not in first.headers
        assert retry.json()["id"] == first.json()["id"]
        assert await count(resources, TriageCase) == 1
        assert await count(resources, TriageOutbox) == 2

    async def test_the_same_key_with_another_body_is_refused(
        self, http: httpx.AsyncClient, resources: Resources
    ) -> None:
        key = idempotency_key()
        await submit(http, key=key)
        other = case_body(presenting_complaint="chest_pain")
        response = await submit(http, other, key=key)
        assert response.status_code == 409
        assert response.json()["error"] == "idempotency_key_reused"
        assert await count(resources, TriageCase) == 1

    async def test_a_retry_is_the_same_request_whatever_the_order_of_its_fields(
        self, http: httpx.AsyncClient
    ) -> None:
        key = idempotency_key()
        body = case_body()
        first = await submit(http, body, key=key)
        reordered = {name: body[name] for name in reversed(body)}
        reordered["incident"] = dict(reversed(body["incident"].items()))
        retry = await submit(http, reordered, key=key)
        assert (retry.status_code, retry.json()["id"]) == (200, first.json()["id"])

    async def test_keys_belong_to_one_crew(self, http: httpx.AsyncClient) -> None:
        key = idempotency_key()
        mine = await submit(http, key=key)
        theirs = await submit(http, key=key, headers=OTHER_CREW)
        assert theirs.status_code == 201
        assert theirs.json()["id"] != mine.json()["id"]

    async def test_twenty_concurrent_requests_with_one_key_make_one_case(
        self, http: httpx.AsyncClient, resources: Resources
    ) -> None:
        key = idempotency_key()
        responses = await asyncio.gather(*(submit(http, key=key) for _ in range(20)))
        assert sorted(r.status_code for r in responses) == [200] * 19 + [201]
        assert len({r.json()["id"] for r in responses}) == 1
        assert await count(resources, TriageCase) == 1
        assert await count(resources, TriageOutbox) == 2

    @pytest.mark.parametrize("key", [None, "short", "x" * 129, "has space in it"])
    async def test_a_missing_or_malformed_key_is_refused(
        self, http: httpx.AsyncClient, resources: Resources, key: str | None
    ) -> None:
        headers = dict(CREW) if key is None else {**CREW, "Idempotency-Key": key}
        response = await http.post("/v1/cases", json=case_body(), headers=headers)
        assert response.status_code == 422
        assert response.json()["fields"][0]["path"] == "header.Idempotency-Key"
        assert await count(resources, TriageCase) == 0


class TestReading:
    async def test_the_crew_reads_its_case_and_the_read_is_audited(
        self, http: httpx.AsyncClient, resources: Resources
    ) -> None:
        case = (await submit(http)).json()
        response = await http.get(f"/v1/cases/{case['id']}", headers=CREW)
        assert response.status_code == 200
        assert response.json() == case
        viewed = [e for e in await outbox_payloads(resources) if e["type"] == "case.viewed"]
        assert len(viewed) == 1
        assert viewed[0]["destination"] == "audit"
        assert viewed[0]["subject_id"] == case["id"]
        assert viewed[0]["actor"] == {"sub": "crew-ne23", "role": "paramedic"}
        assert viewed[0]["data"] == {"reference": case["reference"], "via": "api"}

    async def test_another_crews_case_is_not_found(self, http: httpx.AsyncClient) -> None:
        case = (await submit(http)).json()
        response = await http.get(f"/v1/cases/{case['id']}", headers=OTHER_CREW)
        assert response.status_code == 404
        missing = await http.get("/v1/cases/no-such-case", headers=CREW)
        assert missing.json()["detail"] == response.json()["detail"]

    async def test_a_coordinator_reads_every_case(self, http: httpx.AsyncClient) -> None:
        case = (await submit(http)).json()
        response = await http.get(f"/v1/cases/{case['id']}", headers=auth("coordinator", "ops-1"))
        assert response.status_code == 200

    async def test_without_a_token_it_is_401_and_with_the_wrong_role_403(
        self, http: httpx.AsyncClient
    ) -> None:
        case = (await submit(http)).json()
        anonymous = await http.get(f"/v1/cases/{case['id']}")
        assert anonymous.status_code == 401
        assert anonymous.json()["error"] == "unauthorized"
        forged = await http.get(
            f"/v1/cases/{case['id']}", headers={"Authorization": "Bearer not.a.jwt"}
        )
        assert forged.status_code == 401
        consultant = await http.get(f"/v1/cases/{case['id']}", headers=auth("consultant", "c1"))
        assert consultant.status_code == 403
        consultant_submits = await submit(http, headers=auth("consultant", "c1"))
        assert consultant_submits.status_code == 403

    async def test_a_submission_without_a_token_is_401_before_its_body_is_read(
        self, http: httpx.AsyncClient, resources: Resources
    ) -> None:
        # An unknown caller learns nothing of what a case must hold.
        bad_body = {**case_body(), "patient": {"age_years": -4}}
        response = await http.post(
            "/v1/cases", json=bad_body, headers={"Idempotency-Key": idempotency_key()}
        )
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"
        assert await count(resources, TriageCase) == 0


class TestListing:
    async def test_newest_first_in_pages_of_the_callers_cases_only(
        self, http: httpx.AsyncClient, clock: Any
    ) -> None:
        ids = []
        for _ in range(5):
            ids.append((await submit(http)).json()["id"])
            clock.advance(1)
        await submit(http, headers=OTHER_CREW)
        first = (await http.get("/v1/cases?limit=2", headers=CREW)).json()
        second = (
            await http.get(f"/v1/cases?limit=2&cursor={first['next_cursor']}", headers=CREW)
        ).json()
        third = (
            await http.get(f"/v1/cases?limit=2&cursor={second['next_cursor']}", headers=CREW)
        ).json()
        listed = [c["id"] for page in (first, second, third) for c in page["items"]]
        assert listed == list(reversed(ids))
        assert third["next_cursor"] is None

    async def test_a_coordinator_lists_every_case(self, http: httpx.AsyncClient) -> None:
        await submit(http)
        await submit(http, headers=OTHER_CREW)
        everything = (await http.get("/v1/cases", headers=auth("coordinator", "ops"))).json()
        assert len(everything["items"]) == 2

    async def test_a_forged_cursor_is_a_clear_400(self, http: httpx.AsyncClient) -> None:
        response = await http.get("/v1/cases?cursor=bm9wZQ", headers=CREW)
        assert response.status_code == 400
        assert response.json()["error"] == "bad_cursor"


class TestCommitComesBeforeTheAnswer:
    async def test_a_case_that_fails_to_commit_is_never_reported_created(
        self, http: httpx.AsyncClient, resources: Resources, triage_app: FastAPI
    ) -> None:
        """On SQLite a batch is a transaction, whose COMMIT fails here. On PostgreSQL a
        batch is one statement that commits by itself: that statement fails here, and so
        does the COMMIT of the ordinary path the case then takes."""

        def refuse_commit(_connection: Any) -> None:
            raise RuntimeError("disk full")

        def refuse_the_batch(_connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
            if _is_the_batch(statement):
                raise RuntimeError("disk full")

        with listening(resources, commit=refuse_commit, before_cursor_execute=refuse_the_batch):
            response = await submit(http)
        assert response.status_code == 500
        assert response.json()["error"] == "internal_error"
        assert "disk full" not in response.text
        assert await count(resources, TriageCase) == 0

    async def test_a_batch_that_fails_once_written_is_answered_from_what_it_wrote(
        self, http: httpx.AsyncClient, resources: Resources, triage_app: FastAPI
    ) -> None:
        """A batch's statement that committed (PostgreSQL: it commits by itself) but whose
        answer was lost sends its case down the ordinary path, which finds it written and
        answers with it: one case, its outbox rows once."""
        if resources.engine.dialect.name == "sqlite":
            pytest.skip("SQLite's batch commits only at its COMMIT (above)")

        def lose_the_answer(_connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
            if _is_the_batch(statement):
                raise RuntimeError("connection reset")

        with listening(resources, after_cursor_execute=lose_the_answer):
            response = await submit(http)
        assert response.status_code == 200  # a replay of what the batch wrote
        assert await count(resources, TriageCase) == 1
        assert await count(resources, TriageOutbox) == 2
        stream = (await http.get(f"/v1/cases/{response.json()['id']}/events", headers=CREW)).json()
        assert [(e["seq"], e["type"]) for e in stream["items"]] == [(1, "queued")]

    async def test_a_case_that_fails_to_be_written_is_never_reported_created(
        self, http: httpx.AsyncClient, resources: Resources, triage_app: FastAPI
    ) -> None:
        # Whichever way it goes: in its batch's one statement (PostgreSQL), then alone.
        def refuse(_connection: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
            if (
                statement.startswith("INSERT INTO triage_case ")
                or "(INSERT INTO triage_case " in statement
            ):
                raise RuntimeError("disk full")

        with listening(resources, before_cursor_execute=refuse):
            response = await submit(http)
        assert response.status_code == 500
        assert response.json()["error"] == "internal_error"
        assert "disk full" not in response.text
        assert await count(resources, TriageCase) == 0


class TestPeersDown:
    async def test_cases_are_taken_while_peers_are_down_and_delivered_once_after(
        self,
        http: httpx.AsyncClient,
        triage_app: FastAPI,
        fake_peers: Any,
        clock: Any,
    ) -> None:
        fake_peers.down = True
        created = [(await submit(http)).json()["id"] for _ in range(5)]
        assert len(set(created)) == 5
        await asyncio.sleep(0.2)  # the delivery loop tries, fails and backs off
        assert fake_peers.received == []

        fake_peers.down = False
        clock.advance(60)  # past any back-off

        async def all_arrived() -> bool:
            submitted = fake_peers.of_type("case.submitted")
            return len(submitted) == 10

        await eventually(all_arrived, timeout=10, message="the backlog did not drain")
        for peer in ("/internal/router/events", "/internal/audit/events"):
            ids = [e["subject_id"] for e in fake_peers.to(peer)]
            assert sorted(ids) == sorted(created)
        # Nothing was sent twice to one peer: the failed attempts never reached it.
        assert len(fake_peers.posted) == len(set(fake_peers.posted)) == 10
