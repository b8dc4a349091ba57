"""The consultants' dashboard in a real browser against the embedded app: an offer that
cannot be missed, the full case on accepting, advice with the risk-override confirmation
reaching the crew's page live, a colleague's claim withdrawing the offer, and a dropped
socket that reconnects and replays what it missed."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import httpx
from playwright.async_api import Browser, Page, expect
from websockets.asyncio.client import connect

from services.shared.clock import ManualClock
from tests.browser.conftest import snap
from tests.browser.test_crew_page import sign_in_and_fill
from tests.factories import case_body, idempotency_key
from tests.support import auth, token

ADMIN = auth("admin", "rota-admin")
CREW = auth("paramedic", "crew-ne23")


async def on_call(site: str, clock: ManualClock, *consultants: tuple[str, str]) -> None:
    async with httpx.AsyncClient(base_url=site) as http:
        for consultant_id, name in consultants:
            body = {"name": name, "grade": "consultant", "specialties": ["frailty"]}
            response = await http.put(f"/v1/consultants/{consultant_id}", json=body, headers=ADMIN)
            assert response.status_code == 200, response.text
            shift = {
                "consultant_id": consultant_id, "specialty": "frailty",
                "starts_at": (clock.now() - timedelta(hours=1)).isoformat(),
                "ends_at": (clock.now() + timedelta(hours=8)).isoformat(),
            }  # fmt: skip
            response = await http.post("/v1/shifts", json=shift, headers=ADMIN)
            assert response.status_code == 201, response.text


async def submit(site: str, **overrides: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=site) as http:
        response = await http.post(
            "/v1/cases",
            json=case_body(**overrides),
            headers={**CREW, "Idempotency-Key": idempotency_key()},
        )
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created


async def desk(browser: Browser, site: str, name: str, status: str) -> Page:
    """A consultant's dashboard, signed in with the demo sign-in, at `status`."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    await page.goto(f"{site}/dashboard")
    await page.get_by_label("Demo consultant").select_option(label=f"{name} · frailty")
    await page.get_by_role("button", name="Sign in as this consultant").click()
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    await page.get_by_role("button", name=status.capitalize(), exact=True).click()
    await expect(
        page.get_by_role("button", name=status.capitalize(), exact=True)
    ).to_have_attribute("aria-pressed", "true")
    return page


class TestDashboard:
    async def test_offer_accept_read_advise_and_the_crew_sees_it_live(
        self, browser: Browser, page: Page, site: str, clock: ManualClock
    ) -> None:
        await on_call(site, clock, ("dr-okafor", "Dr Amara Okafor"))
        await page.goto(f"{site}/dashboard")
        await snap(page, "dashboard-0-sign-in")
        consultant = await desk(browser, site, "Dr Amara Okafor", "available")

        # The crew asks from its own page, with a risk flag (cannot walk).
        await sign_in_and_fill(page, site)
        await page.get_by_role("button", name="Send to a consultant").click()
        await expect(page.locator("#case-status")).to_have_text("queued")
        reference = (await page.locator("#case-reference").text_content() or "").strip()

        offer = consultant.locator(".offer")
        await expect(offer).to_contain_text(reference)
        await expect(offer).to_contain_text("NEWS2 5 · Medium")
        await expect(offer.locator(".countdown")).to_have_text(re.compile(r"^\d+ s$"))
        await expect(consultant).to_have_title("▶ 1 offer waiting", timeout=3000)
        await snap(consultant, "dashboard-1-offer")

        await offer.get_by_role("button", name="Accept").click()
        section = consultant.locator("#consult")
        await expect(section).to_be_visible()
        await expect(consultant.locator(".offer")).to_have_count(0)
        await expect(consultant).to_have_title("reach · dashboard")
        await expect(section).to_contain_text(reference)
        await expect(section).to_contain_text("Found on floor, long lie")
        await expect(section.locator("table.news2 td.band-2")).not_to_have_count(0)
        await expect(section).to_contain_text("cannot walk")
        await expect(section.locator("#consult-crew")).to_contain_text("NE23")
        await expect(section.locator("#consult-waited")).to_contain_text("waited")
        await expect(page.locator("#case-status")).to_have_text("accepted")
        await snap(consultant, "dashboard-2-case")

        await consultant.get_by_role("radio", name="Alternative pathway").check()
        await consultant.get_by_role("button", name="Send advice").click()
        await expect(consultant.locator("#advice-error")).to_contain_text("needs the pathway")
        await consultant.get_by_label("Pathway (required").select_option("falls")
        await consultant.get_by_label("Advice to the crew").fill("Falls team visit today.")
        await consultant.get_by_role("textbox", name="Safety-netting").fill(
            "999 if she cannot stand."
        )
        await consultant.get_by_role("button", name="Send advice").click()
        override = consultant.locator("#override")
        await expect(override).to_be_visible()
        await expect(override).to_contain_text("cannot walk")
        await snap(consultant, "dashboard-3-risk-override")

        await consultant.get_by_label("I have considered these flags").check()
        await consultant.get_by_role("button", name="Send advice").click()
        await expect(consultant.locator("#advised")).to_contain_text(
            "Advice sent: redirect (falls)"
        )
        await snap(consultant, "dashboard-4-advised")

        await expect(page.locator("#case-status")).to_have_text("advised")
        await expect(page.locator("#case-advice")).to_contain_text("Falls team visit today.")
        await snap(page, "crew-4-advice-from-the-dashboard")
        await consultant.context.close()

    async def test_a_colleagues_claim_withdraws_the_offer_on_the_other_page(
        self, browser: Browser, site: str, clock: ManualClock
    ) -> None:
        await on_call(
            site, clock, ("dr-okafor", "Dr Amara Okafor"), ("dr-hughes", "Dr Sian Hughes")
        )
        offered = await desk(browser, site, "Dr Amara Okafor", "available")
        colleague = await desk(browser, site, "Dr Sian Hughes", "busy")
        case = await submit(site)
        await expect(offered.locator(".offer")).to_contain_text(case["reference"])

        row = colleague.locator(f"#queue-body tr[data-case='{case['id']}']")
        await expect(row).to_contain_text(case["reference"])
        await expect(row).to_contain_text("offered (1)")
        await snap(colleague, "dashboard-5-queue")
        await row.get_by_role("button", name=f"Claim case {case['reference']}").click()
        await expect(colleague.locator("#consult")).to_contain_text(case["reference"])

        await expect(offered.locator(".offer")).to_have_count(0)
        await expect(offered.locator("#notice")).to_contain_text(
            f"Offer for {case['reference']} withdrawn: a colleague accepted it"
        )
        await snap(offered, "dashboard-6-withdrawn")
        for opened in (offered, colleague):
            await opened.context.close()

    async def test_a_dropped_socket_reconnects_and_replays_what_it_missed(
        self, browser: Browser, site: str, clock: ManualClock
    ) -> None:
        await on_call(site, clock, ("dr-okafor", "Dr Amara Okafor"))
        consultant = await desk(browser, site, "Dr Amara Okafor", "available")
        ws = site.replace("http://", "ws://") + "/v1/consultant/stream"
        # The consultant's phone stays connected, so they stay on call while the
        # dashboard's socket is down and the offer is logged for them.
        async with connect(ws) as phone:
            await phone.send(
                json.dumps({"type": "hello", "token": token("consultant", "dr-okafor")})
            )
            # Connected once welcomed: only then may the dashboard's socket go, or for a
            # moment the consultant has no device and is no longer offered anything.
            while json.loads(await phone.recv())["type"] != "welcome":
                pass
            await consultant.evaluate("window.reachDashboard.socket.stop()")
            await expect(consultant.locator("#connection")).to_have_attribute(
                "data-state", "offline"
            )
            case = await submit(site)
            while json.loads(await phone.recv())["type"] != "offer":
                pass
            await expect(consultant.locator(".offer")).to_have_count(0)
            await consultant.evaluate("window.reachDashboard.socket.start()")
            await expect(consultant.locator("#connection")).to_have_text(
                "reconnected: 1 missed update replayed"
            )
            await expect(consultant.locator(".offer")).to_contain_text(case["reference"])
            await expect(consultant.locator("#notice")).to_contain_text(
                "1 update you missed was replayed"
            )
            await snap(consultant, "dashboard-7-reconnected")
        await consultant.context.close()
