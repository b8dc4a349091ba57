"""Text the database cannot store (a NUL, a lone surrogate) reaching audit: an event from
a peer holding some is rejected alone, never a failed batch the peer would post for
ever; a trail or report query holding a NUL is a 422 naming the parameter."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from services.shared.clock import ManualClock
from tests.audit.conftest import COORDINATOR, Feed, event
from tests.factories import UNSTORABLE_WAYS, UNSTORABLE_WORDS, json_content
from tests.support import service_auth
from tests.triage_api.test_bad_input import assert_envelope


def with_text(kind: str, text: str, clock: ManualClock) -> dict[str, Any]:
    """An event a peer might send with `text` in one of the places that can hold it."""
    if kind == "data":
        return event("case.submitted", "case-data", clock.now(), reference=text)
    if kind == "subject":
        return event("case.viewed", f"case-{text}", clock.now(), via="api")
    if kind == "actor":
        return event("case.viewed", "case-actor", clock.now(), actor=(text, "paramedic"))
    keyed = event("case.viewed", "case-key", clock.now(), via="api")
    return {**keyed, "data": {text: "api"}}


class TestIngest:
    @pytest.mark.parametrize("way", UNSTORABLE_WAYS)
    @pytest.mark.parametrize("kind", ["data", "subject", "actor", "key"])
    async def test_an_event_that_cannot_be_stored_is_rejected_alone(
        self, http: httpx.AsyncClient, feed: Feed, clock: ManualClock, kind: str, way: str
    ) -> None:
        text, raw_surrogates = UNSTORABLE_WAYS[way]
        before = event("case.submitted", "case-before", clock.now(), reference="R-1")
        after = event("case.submitted", "case-after", clock.now(), reference="R-2")
        bad = with_text(kind, text, clock)
        response = await http.post(
            "/internal/audit/events",
            content=json_content({"events": [before, bad, after]}, raw_surrogates=raw_surrogates),
            headers={**service_auth("triage_api"), "Content-Type": "application/json"},
        )
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [(r["id"], r["outcome"]) for r in results] == [
            (before["id"], "accepted"), (bad["id"], "rejected"), (after["id"], "accepted"),
        ]  # fmt: skip
        assert results[1]["detail"] == "unstorable_text"
        assert [e["event_id"] for e in await feed.trail()] == [before["id"], after["id"]]
        assert (await feed.verify(full=True))["ok"] is True

    async def test_an_id_that_cannot_be_sent_back_is_answered_with_an_empty_one(
        self, http: httpx.AsyncClient, feed: Feed, clock: ManualClock
    ) -> None:
        bad = {**event("case.viewed", "case-1", clock.now(), via="api"), "id": "e\ud800" * 8}
        response = await http.post(
            "/internal/audit/events",
            content=json_content({"events": [bad]}),
            headers={**service_auth("triage_api"), "Content-Type": "application/json"},
        )
        assert response.status_code == 200, response.text
        assert response.json()["results"] == [
            {"id": "", "outcome": "rejected", "detail": "unstorable_text"}
        ]
        assert [e["event_type"] for e in await feed.trail()] == []


class TestQueries:
    @pytest.mark.parametrize(
        ("path", "named"),
        [
            ("/v1/audit/events?subject_id=case%00Marchetti", "query.subject_id"),
            ("/v1/audit/events?type=case.viewed%00", "query.type"),
            ("/v1/reports/redirection?format=csv%00", "query.format"),
        ],
    )
    async def test_a_query_parameter_holding_a_nul_is_a_422_naming_it(
        self, http: httpx.AsyncClient, feed: Feed, path: str, named: str
    ) -> None:
        response = await http.get(path, headers=COORDINATOR)
        body = assert_envelope(response, 422, "validation_error")
        assert [problem["path"] for problem in body["fields"]] == [named]
        assert not any(word in response.text for word in UNSTORABLE_WORDS)
        # The refused query is not itself an entry of the trail.
        assert [e["event_type"] for e in await feed.trail()] == []
