"""The rota: consultants and shifts, entered and shown in Europe/London, stored in UTC,
across both UK clock changes."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from services.consult_router.engine import RoutingEngine
from services.shared.clock import ManualClock
from tests.consult_router.conftest import ADMIN, Desk, snapshot
from tests.support import auth

COORDINATOR = auth("coordinator", "ops")
SPRING_FORWARD = "2026-03-29"  # 01:00 GMT becomes 02:00 BST
FALL_BACK = "2026-10-25"  # 02:00 BST becomes 01:00 GMT


async def add_consultant(
    http: httpx.AsyncClient, consultant_id: str, specialties: list[str]
) -> None:
    response = await http.put(
        f"/v1/consultants/{consultant_id}",
        json={"name": f"Dr {consultant_id}", "grade": "consultant", "specialties": specialties},
        headers=ADMIN,
    )
    assert response.status_code == 200, response.text


async def post_shift(
    http: httpx.AsyncClient, starts: str, ends: str, *, who: str = "dr-a"
) -> httpx.Response:
    return await http.post(
        "/v1/shifts",
        json={"consultant_id": who, "specialty": "frailty", "starts_at": starts, "ends_at": ends},
        headers=ADMIN,
    )


class TestConsultants:
    async def test_an_admin_adds_and_changes_a_consultant(self, http: httpx.AsyncClient) -> None:
        await add_consultant(http, "dr-a", ["frailty"])
        response = await http.put(
            "/v1/consultants/dr-a",
            json={
                "name": "Dr Ada",
                "grade": "consultant",
                "specialties": ["frailty", "acute_medicine"],
            },
            headers=ADMIN,
        )
        body = response.json()
        assert (body["name"], body["specialties"], body["status"]) == (
            "Dr Ada", ["acute_medicine", "frailty"], "away",
        )  # fmt: skip
        listed = (await http.get("/v1/consultants", headers=COORDINATOR)).json()
        assert [c["id"] for c in listed] == ["dr-a"]

    @pytest.mark.parametrize("role", ["consultant", "coordinator", "paramedic"])
    async def test_only_an_admin_changes_the_rota(self, http: httpx.AsyncClient, role: str) -> None:
        response = await http.put(
            "/v1/consultants/dr-a",
            json={"name": "x", "grade": "y", "specialties": ["frailty"]},
            headers=auth(role, "someone"),
        )
        assert response.status_code == 403

    @pytest.mark.parametrize(
        "body",
        [
            {"name": "x", "grade": "y", "specialties": []},
            {"name": "x", "grade": "y", "specialties": ["dentistry"]},
            {"name": "", "grade": "y", "specialties": ["frailty"]},
        ],
    )
    async def test_bad_consultants_are_refused(
        self, http: httpx.AsyncClient, body: dict[str, object]
    ) -> None:
        response = await http.put("/v1/consultants/dr-a", json=body, headers=ADMIN)
        assert response.status_code == 422


class TestShifts:
    async def test_a_shift_is_stored_in_utc_and_shown_in_london(
        self, http: httpx.AsyncClient
    ) -> None:
        await add_consultant(http, "dr-a", ["frailty"])
        summer = (await post_shift(http, "2026-07-01T08:00:00", "2026-07-01T20:00:00")).json()
        assert summer["starts_at"].startswith("2026-07-01T07:00:00")
        assert summer["starts_at_local"] == "2026-07-01T08:00:00+01:00"
        winter = (await post_shift(http, "2026-12-01T08:00:00", "2026-12-01T20:00:00")).json()
        assert winter["starts_at"].startswith("2026-12-01T08:00:00")
        assert winter["starts_at_local"] == "2026-12-01T08:00:00+00:00"

    async def test_a_night_across_the_spring_change_is_an_hour_shorter(
        self, http: httpx.AsyncClient
    ) -> None:
        await add_consultant(http, "dr-a", ["frailty"])
        night = (await post_shift(http, "2026-03-28T20:00:00", f"{SPRING_FORWARD}T08:00:00")).json()
        hours = _hours(night["starts_at"], night["ends_at"])
        assert hours == 11
        assert night["ends_at_local"] == f"{SPRING_FORWARD}T08:00:00+01:00"

    async def test_a_night_across_the_autumn_change_is_an_hour_longer(
        self, http: httpx.AsyncClient
    ) -> None:
        await add_consultant(http, "dr-a", ["frailty"])
        night = (await post_shift(http, "2026-10-24T20:00:00", f"{FALL_BACK}T08:00:00")).json()
        assert _hours(night["starts_at"], night["ends_at"]) == 13
        assert night["starts_at_local"] == "2026-10-24T20:00:00+01:00"
        assert night["ends_at_local"] == f"{FALL_BACK}T08:00:00+00:00"

    async def test_times_that_do_not_exist_or_happen_twice_need_an_offset(
        self, http: httpx.AsyncClient
    ) -> None:
        await add_consultant(http, "dr-a", ["frailty"])
        gap = await post_shift(http, f"{SPRING_FORWARD}T01:30:00", f"{SPRING_FORWARD}T09:00:00")
        assert gap.status_code == 422
        assert gap.json()["fields"][0]["path"] == "starts_at"
        twice = await post_shift(http, f"{FALL_BACK}T01:30:00", f"{FALL_BACK}T09:00:00")
        assert twice.status_code == 422
        assert "twice" in twice.json()["detail"]
        explicit = await post_shift(http, f"{FALL_BACK}T01:30:00+00:00", f"{FALL_BACK}T09:00:00")
        assert explicit.status_code == 201
        assert explicit.json()["starts_at_local"] == f"{FALL_BACK}T01:30:00+00:00"

    @pytest.mark.parametrize(
        ("starts", "ends", "who", "path"),
        [
            ("2026-07-01T20:00:00", "2026-07-01T08:00:00", "dr-a", "ends_at"),
            ("2026-07-01T08:00:00", "2026-07-09T08:00:00", "dr-a", "ends_at"),
            ("2026-07-01T08:00:00", "2026-07-01T20:00:00", "dr-nobody", "consultant_id"),
            ("0001-01-01T08:00:00", "0001-01-01T20:00:00", "dr-a", "starts_at"),
            ("9999-12-31T08:00:00Z", "9999-12-31T20:00:00Z", "dr-a", "starts_at"),
        ],
    )
    async def test_impossible_shifts_are_refused(
        self, http: httpx.AsyncClient, starts: str, ends: str, who: str, path: str
    ) -> None:
        await add_consultant(http, "dr-a", ["frailty"])
        response = await post_shift(http, starts, ends, who=who)
        assert response.status_code == 422
        assert response.json()["fields"][0]["path"] == path

    async def test_a_shift_must_be_in_one_of_the_consultants_specialties(
        self, http: httpx.AsyncClient
    ) -> None:
        await add_consultant(http, "dr-a", ["frailty"])
        response = await http.post(
            "/v1/shifts",
            json={
                "consultant_id": "dr-a",
                "specialty": "stroke",
                "starts_at": "2026-07-01T08:00:00",
                "ends_at": "2026-07-01T20:00:00",
            },
            headers=ADMIN,
        )
        assert response.status_code == 422

    async def test_listing_by_window_and_deleting(self, http: httpx.AsyncClient) -> None:
        await add_consultant(http, "dr-a", ["frailty"])
        first = (await post_shift(http, "2026-07-01T08:00:00", "2026-07-01T20:00:00")).json()
        await post_shift(http, "2026-07-02T08:00:00", "2026-07-02T20:00:00")
        window = await http.get(
            "/v1/shifts",
            params={"from": "2026-07-01T00:00:00", "to": "2026-07-02T00:00:00"},
            headers=COORDINATOR,
        )
        assert [s["id"] for s in window.json()] == [first["id"]]
        assert (await http.delete(f"/v1/shifts/{first['id']}", headers=ADMIN)).status_code == 204
        assert (await http.delete(f"/v1/shifts/{first['id']}", headers=ADMIN)).status_code == 404


class TestOnCall:
    @pytest.mark.parametrize("moment", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"])
    async def test_a_moment_outside_any_rota_is_refused_clearly(
        self, http: httpx.AsyncClient, moment: str
    ) -> None:
        response = await http.get(
            "/v1/oncall", params={"specialty": "frailty", "at": moment}, headers=COORDINATOR
        )
        assert response.status_code == 422
        assert response.json()["fields"][0]["path"] == "at"

    @pytest.mark.parametrize(
        ("moment", "who"),
        [
            # Spring: the day shift starts at 08:00 BST, which is 07:00 UTC.
            (f"{SPRING_FORWARD}T06:59:00+00:00", "dr-night"),
            (f"{SPRING_FORWARD}T07:00:00+00:00", "dr-day"),
            # Autumn: 08:00 GMT is 08:00 UTC; at 07:30 UTC the night is still on.
            (f"{FALL_BACK}T07:30:00+00:00", "dr-night"),
            (f"{FALL_BACK}T08:00:00+00:00", "dr-day"),
        ],
    )
    async def test_who_is_on_call_at_a_moment_across_the_clock_changes(
        self, http: httpx.AsyncClient, moment: str, who: str
    ) -> None:
        await add_consultant(http, "dr-night", ["frailty"])
        await add_consultant(http, "dr-day", ["frailty"])
        day = moment[:10]
        before = {SPRING_FORWARD: "2026-03-28", FALL_BACK: "2026-10-24"}[day]
        await post_shift(http, f"{before}T20:00:00", f"{day}T08:00:00", who="dr-night")
        await post_shift(http, f"{day}T08:00:00", f"{day}T20:00:00", who="dr-day")
        response = await http.get(
            "/v1/oncall", params={"specialty": "frailty", "at": moment}, headers=COORDINATOR
        )
        body = response.json()
        assert [entry["consultant"]["id"] for entry in body["on_call"]] == [who]
        assert body["fallback"] == "emergency_medicine"

    async def test_routing_follows_the_london_handover_on_the_spring_morning(
        self, desk: Desk, engine: RoutingEngine, clock: ManualClock
    ) -> None:
        clock.set(datetime(2026, 3, 29, 6, 55, tzinfo=UTC))
        await desk.consultant("dr-night", ["frailty"], on_shift_for=[])
        await desk.consultant("dr-day", ["frailty"], on_shift_for=[])
        await post_shift(
            desk.http, "2026-03-28T20:00:00", f"{SPRING_FORWARD}T08:00:00", who="dr-night"
        )
        await post_shift(
            desk.http, f"{SPRING_FORWARD}T08:00:00", f"{SPRING_FORWARD}T20:00:00", who="dr-day"
        )
        clock.set(datetime(2026, 3, 29, 7, 1, tzinfo=UTC))  # 08:01 BST
        await desk.send_case(snapshot(clock))
        await engine.run_once()
        assert [kind for kind, _ in await desk.log("dr-day")] == ["offer"]
        assert await desk.log("dr-night") == []


def _hours(starts: str, ends: str) -> float:
    start = datetime.fromisoformat(starts.replace("Z", "+00:00"))
    end = datetime.fromisoformat(ends.replace("Z", "+00:00"))
    return (end - start).total_seconds() / 3600
