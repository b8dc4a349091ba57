"""The redirection report against a fixture worked out by hand: counts, rates, medians and
90th centiles (linear interpolation between closest ranks); CSV and JSON agree; empty
windows and bad parameters give clear answers."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.audit.conftest import COORDINATOR, Feed

DAY = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
WINDOW = {"from": "2026-11-20T00:00:00+00:00", "to": "2026-11-22T00:00:00+00:00"}


@pytest.fixture(params=["case by case", "one batch, backwards"])
async def six_cases(feed: Feed, request: pytest.FixtureRequest) -> None:
    """The same outcomes, whether each case's events come on their own or every event
    comes in one batch in reverse order (outcome records are filled in batch)."""
    if request.param == "one batch, backwards":
        feed.held = []
    at = DAY
    await feed.case_outcome(
        "a",
        at,
        specialty="frailty",
        call_category="C3",
        accepted_after=60,
        advised_after=300,
        disposition="home",
    )
    await feed.case_outcome(
        "b",
        at,
        specialty="frailty",
        call_category="C2",
        accepted_after=120,
        advised_after=600,
        disposition="redirect",
        pathway="falls",
    )
    await feed.case_outcome(
        "c",
        at,
        specialty="frailty",
        call_category="C3",
        accepted_after=30,
        advised_after=900,
        disposition="convey_ed",
    )
    await feed.case_outcome(
        "d",
        at.replace(day=21),
        specialty="cardiology",
        call_category="C2",
        accepted_after=90,
        advised_after=400,
        disposition="redirect",
        pathway="sdec",
    )
    await feed.case_outcome(
        "e", at.replace(day=21), specialty="cardiology", call_category="C1", cancelled_after=50
    )
    await feed.case_outcome("f", at, specialty="frailty", call_category="C3", accepted_after=40)
    # Outside the window: counted nowhere.
    await feed.case_outcome("g", at.replace(day=25), accepted_after=10, advised_after=20,
                            disposition="convey_ed")  # fmt: skip
    if feed.held is not None:
        await feed.release()


async def report(http: httpx.AsyncClient, **params: Any) -> httpx.Response:
    return await http.get("/v1/reports/redirection", params=params, headers=COORDINATOR)


@pytest.mark.usefixtures("six_cases")
class TestByHand:
    async def test_the_totals(self, http: httpx.AsyncClient) -> None:
        body = (await report(http, **WINDOW, group_by="specialty")).json()
        assert body["total"] == {
            "cases": 6,
            "dispositions": {"convey_ed": 1, "redirect": 2, "home": 1},
            "cancelled": 1,
            "open": 1,
            "redirection_rate": 0.75,
            # accept: 30 40 60 90 120 -> median 60; p90 at rank 3.6 -> 90 + 0.6 * 30
            "time_to_accept": {"median_seconds": 60.0, "p90_seconds": pytest.approx(108.0)},
            # advice: 300 400 600 900 -> median 500; p90 at rank 2.7 -> 600 + 0.7 * 300
            "time_to_advice": {"median_seconds": 500.0, "p90_seconds": pytest.approx(810.0)},
        }

    async def test_by_specialty(self, http: httpx.AsyncClient) -> None:
        groups = {
            g["group"]: g
            for g in (await report(http, **WINDOW, group_by="specialty")).json()["groups"]
        }
        assert set(groups) == {"cardiology", "frailty"}
        frailty, cardiology = groups["frailty"], groups["cardiology"]
        assert (frailty["cases"], frailty["open"], frailty["cancelled"]) == (4, 1, 0)
        assert frailty["redirection_rate"] == pytest.approx(2 / 3)
        # accept 30 40 60 120: median 50, p90 at rank 2.7 -> 60 + 0.7 * 60
        assert frailty["time_to_accept"] == {
            "median_seconds": 50.0,
            "p90_seconds": pytest.approx(102.0),
        }
        # advice 300 600 900: median 600, p90 at rank 1.8 -> 600 + 0.8 * 300
        assert frailty["time_to_advice"] == {
            "median_seconds": 600.0,
            "p90_seconds": pytest.approx(840.0),
        }
        assert (cardiology["cases"], cardiology["cancelled"], cardiology["open"]) == (2, 1, 0)
        # The cancelled case counts in neither part of the rate.
        assert cardiology["redirection_rate"] == 1.0
        assert cardiology["time_to_accept"] == {"median_seconds": 90.0, "p90_seconds": 90.0}

    async def test_by_day_pathway_and_call_category(self, http: httpx.AsyncClient) -> None:
        by_day = (await report(http, **WINDOW, group_by="day")).json()["groups"]
        assert [(g["group"], g["cases"]) for g in by_day] == [("2026-11-20", 4), ("2026-11-21", 2)]
        by_pathway = (await report(http, **WINDOW, group_by="pathway")).json()["groups"]
        assert [(g["group"], g["cases"]) for g in by_pathway] == [
            ("falls", 1), ("none", 4), ("sdec", 1),
        ]  # fmt: skip
        by_category = (await report(http, **WINDOW, group_by="call_category")).json()["groups"]
        assert [(g["group"], g["cases"]) for g in by_category] == [("C1", 1), ("C2", 2), ("C3", 3)]

    async def test_csv_and_json_agree(self, http: httpx.AsyncClient) -> None:
        for group_by in ("day", "specialty", "pathway", "call_category"):
            body = (await report(http, **WINDOW, group_by=group_by)).json()
            response = await report(http, **WINDOW, group_by=group_by, format="csv")
            assert response.headers["content-type"].startswith("text/csv")
            rows = list(csv.DictReader(io.StringIO(response.text)))
            as_json = [*body["groups"], {"group": "total", **body["total"]}]
            assert [r["group"] for r in rows] == [g["group"] for g in as_json]
            for row, group in zip(rows, as_json, strict=True):
                assert int(row["cases"]) == group["cases"]
                assert int(row["redirect"]) == group["dispositions"]["redirect"]
                assert int(row["open"]) == group["open"]
                assert _number(row["redirection_rate"]) == _rounded(group["redirection_rate"])
                assert _number(row["time_to_advice_p90_seconds"]) == _rounded(
                    group["time_to_advice"]["p90_seconds"]
                )

    async def test_an_accept_header_asks_for_csv(self, http: httpx.AsyncClient) -> None:
        response = await http.get(
            "/v1/reports/redirection", params=WINDOW,
            headers={**COORDINATOR, "Accept": "text/csv"},
        )  # fmt: skip
        assert response.text.splitlines()[0].startswith("group,cases,convey_ed,redirect,home")


def _number(cell: str) -> float | None:
    return None if cell == "" else float(cell)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


class TestDaysAreLondonDays:
    async def test_a_case_after_midnight_in_summer_time_belongs_to_the_next_day(
        self, feed: Feed, http: httpx.AsyncClient
    ) -> None:
        # 23:30 UTC on 30 June is 00:30 on 1 July in London (BST).
        await feed.case_outcome("late", datetime(2026, 6, 30, 23, 30, tzinfo=UTC))
        body = (
            await report(http, **{"from": "2026-06-30T00:00:00Z", "to": "2026-07-02T00:00:00Z"})
        ).json()
        assert [g["group"] for g in body["groups"]] == ["2026-07-01"]


class TestClearAnswers:
    async def test_an_empty_window(self, http: httpx.AsyncClient) -> None:
        body = (await report(http, **WINDOW)).json()
        assert body["groups"] == []
        assert body["total"]["cases"] == 0
        assert body["total"]["redirection_rate"] is None
        assert body["total"]["time_to_accept"] == {"median_seconds": None, "p90_seconds": None}
        lines = (await report(http, **WINDOW, format="csv")).text.splitlines()
        assert len(lines) == 2
        assert lines[1].startswith("total,0,0,0,0,0,0,,")

    @pytest.mark.parametrize(
        ("params", "status", "code"),
        [
            ({"from": "2026-11-22T00:00:00Z", "to": "2026-11-20T00:00:00Z"}, 400, "bad_window"),
            (
                {"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
                400,
                "window_too_long",
            ),
            ({"group_by": "week"}, 422, "validation_error"),
            ({"from": "yesterday"}, 422, "validation_error"),
            ({"from": "2026-11-20T00:00:00"}, 422, "validation_error"),
            ({"format": "xml"}, 422, "validation_error"),
            ({"to": "0001-01-02T00:00:00Z"}, 400, "bad_window"),
            (
                {"from": "0001-01-01T00:00:00Z", "to": "9999-12-31T00:00:00Z"},
                400,
                "window_too_long",
            ),
        ],
    )
    async def test_bad_parameters(
        self, http: httpx.AsyncClient, params: dict[str, str], status: int, code: str
    ) -> None:
        response = await report(http, **params)
        assert response.status_code == status
        assert response.json()["error"] == code
