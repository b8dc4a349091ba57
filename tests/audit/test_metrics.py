"""audit's metrics come from stored records: a scrape after known dispositions shows the
expected counts and ratio, and a restarted process shows the same."""

from __future__ import annotations

from datetime import timedelta

import httpx

from services.audit.app import create_app
from services.embedded import EmbeddedSettings
from services.shared.clock import ManualClock
from services.shared.resources import open_resources
from tests.audit.conftest import Feed
from tests.support import scrape


def disposition(
    kind: str, pathway: str, specialty: str = "frailty"
) -> tuple[str, tuple[tuple[str, str], ...]]:
    labels = {"disposition": kind, "pathway": pathway, "specialty": specialty}
    return ("reach_dispositions_total", tuple(sorted(labels.items())))


def ratio(window: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return ("reach_redirection_ratio", (("window", window),))


async def test_a_scrape_shows_the_recorded_outcomes_and_a_restart_keeps_them(
    feed: Feed, http: httpx.AsyncClient, clock: ManualClock, audit_settings: EmbeddedSettings
) -> None:
    recent = clock.now() - timedelta(minutes=30)
    await feed.case_outcome("a", recent, accepted_after=30, advised_after=240, disposition="home")
    await feed.case_outcome("b", recent, accepted_after=30, advised_after=300,
                            disposition="redirect", pathway="falls")  # fmt: skip
    await feed.case_outcome("c", recent, accepted_after=30, advised_after=600,
                            disposition="convey_ed")  # fmt: skip
    # Two days ago: in the 7-day window only.
    older = clock.now() - timedelta(days=2)
    await feed.case_outcome("d", older, accepted_after=30, advised_after=60,
                            disposition="convey_ed")  # fmt: skip

    first = await scrape(http)
    assert first[disposition("home", "none")] == 1
    assert first[disposition("redirect", "falls")] == 1
    assert first[disposition("convey_ed", "none")] == 2
    assert first[ratio("1h")] == 2 / 3
    assert first[ratio("24h")] == 2 / 3
    assert first[ratio("7d")] == 2 / 4
    histogram = ("reach_time_to_advice_seconds_bucket", (("le", "300.0"), ("specialty", "frailty")))
    assert first[histogram] == 3  # 60, 240 and 300 seconds
    assert first[("reach_time_to_advice_seconds_count", (("specialty", "frailty"),))] == 4
    assert first[("reach_audit_entries", ())] >= 4

    # A new process on the same database: nothing was held in memory.
    async with open_resources(audit_settings, clock=clock) as resources:
        app = create_app(audit_settings, resources=resources)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://audit") as again:
                second = await scrape(again)
    for key in (disposition("home", "none"), ratio("1h"), ratio("7d"), histogram):
        assert second[key] == first[key]


async def test_no_window_without_dispositions_reports_a_ratio(http: httpx.AsyncClient) -> None:
    scraped = await scrape(http)
    assert not [key for key in scraped if key[0] == "reach_redirection_ratio"]
