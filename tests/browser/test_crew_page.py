"""The crew's page in a real browser: sign in, ask for advice, watch the case live."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from playwright.async_api import Page, expect

from services.shared.clock import ManualClock
from tests.browser.conftest import snap
from tests.support import service_auth


async def router_says(
    site: str, case_id: str, version: int, kind: str, clock: ManualClock, **data: Any
) -> None:
    """What consult_router would send triage_api (the router itself is not under test)."""
    event = {
        "id": uuid.uuid4().hex,
        "type": f"consult.{kind}",
        "source": "consult_router",
        "occurred_at": clock.now().isoformat(),
        "subject_id": case_id,
        "data": {"router_version": version, "at": clock.now().isoformat(), **data},
    }
    async with httpx.AsyncClient(base_url=site) as client:
        response = await client.post(
            "/internal/triage/events", json={"events": [event]}, headers=service_auth()
        )
        assert response.json()["results"][0]["outcome"] == "accepted"


async def sign_in_and_fill(page: Page, site: str) -> None:
    await page.goto(f"{site}/crew")
    await page.get_by_role("button", name="Sign in as a demo crew").click()
    await page.get_by_label("CAD reference").fill("CAD-778812")
    await page.get_by_label("Age (years)").fill("84")
    await page.get_by_label("Sex").select_option("female")
    await page.get_by_label("Presenting complaint").select_option("fall")
    await page.get_by_label("Specialty wanted").select_option("frailty")
    obs = page.locator("#obs-fieldset")
    for label, value in [("Resp. rate /min", "22"), ("SpO₂ %", "95"), ("Systolic BP", "115"),
                         ("Pulse /min", "95"), ("Temperature °C", "38.2")]:  # fmt: skip
        await obs.get_by_label(label).fill(value)
    await obs.get_by_label("ACVPU").select_option("A")
    await obs.get_by_label("Air or oxygen").select_option("false")
    await page.get_by_label("cannot walk").check()
    await page.get_by_label("Handover").fill("Found on floor, long lie, no head injury.")


class TestCrewPage:
    async def test_ask_watch_live_and_acknowledge(
        self, page: Page, site: str, clock: ManualClock
    ) -> None:
        await sign_in_and_fill(page, site)
        await snap(page, "crew-1-new-case")
        await page.get_by_role("button", name="Send to a consultant").click()

        await expect(page.locator("#case-status")).to_have_text("queued")
        await expect(page.locator(".news2-total")).to_have_text("NEWS2 5 · Medium")
        await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        await snap(page, "crew-2-queued")
        case_id = await page.evaluate("sessionStorage.getItem('reach.crew.case')")

        consultant = {"id": "dr-okafor", "name": "Dr Okafor"}
        await router_says(site, case_id, 1, "offered", clock)
        await router_says(site, case_id, 2, "accepted", clock, consultant=consultant)
        await expect(page.locator("#timeline li[data-type=accepted]")).to_contain_text("Dr Okafor")
        advice = {
            "disposition": "redirect",
            "pathway": "falls",
            "advice": "Falls team visit today",
            "safety_netting": "999 if she cannot stand",
        }
        await router_says(site, case_id, 3, "advised", clock, consultant=consultant, **advice)
        await expect(page.locator("#case-status")).to_have_text("advised")
        await expect(page.locator("#case-advice")).to_contain_text("Falls team visit today")
        await expect(page.locator("#case-advice")).to_contain_text("999 if she cannot stand")
        await snap(page, "crew-3-advised")

        await page.get_by_role("button", name="We will follow it").click()
        await expect(page.locator("#case-status")).to_have_text("closed")
        await expect(page.locator("#timeline li")).to_have_count(5)

    async def test_invalid_vitals_are_shown_next_to_the_field(self, page: Page, site: str) -> None:
        await sign_in_and_fill(page, site)
        await page.locator("#obs-fieldset").get_by_label("Pulse /min").fill("900")
        await page.get_by_role("button", name="Send to a consultant").click()
        pulse = page.locator("#obs-fieldset").get_by_label("Pulse /min")
        await expect(pulse).to_have_attribute("aria-invalid", "true")
        await expect(page.locator("#obs-fieldset .field-error")).to_contain_text(
            "less than or equal to 300"
        )
        await expect(page.locator("#case-error")).to_contain_text("invalid or missing fields")
        await snap(page, "crew-invalid-vitals")

    async def test_a_dropped_connection_reconnects_and_catches_up(
        self, page: Page, site: str, clock: ManualClock
    ) -> None:
        await sign_in_and_fill(page, site)
        await page.get_by_role("button", name="Send to a consultant").click()
        await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        case_id = await page.evaluate("sessionStorage.getItem('reach.crew.case')")
        await page.evaluate("window.reachCrewSocket.stop()")
        await expect(page.locator("#connection")).to_have_attribute("data-state", "offline")
        await router_says(site, case_id, 1, "offered", clock)
        await router_says(
            site, case_id, 2, "accepted", clock, consultant={"id": "d", "name": "Dr Li"}
        )
        await page.evaluate("window.reachCrewSocket.start()")
        await expect(page.locator("#timeline li")).to_have_count(3)
        await expect(page.locator("#timeline li[data-type=accepted]")).to_contain_text("Dr Li")
