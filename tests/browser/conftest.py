"""Browser tests: Debian's Chromium driven by Playwright, against the embedded app
served by a real uvicorn on 127.0.0.1. Skipped, with the reason, where Chromium is not
installed (`.ci/run` installs it).

Screenshots of each state are written to tests/artifacts/screenshots; with
REACH_UPDATE_SCREENSHOTS=1 they go to docs/screenshots, where the README shows them.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

from services.embedded import EmbeddedSettings, create_app
from services.shared.clock import ManualClock
from tests.support import running_server

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
# Chromium as root, headless, and quiet: no calls to Google's services on a closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]


def screenshot_dir() -> Path:
    if os.environ.get("REACH_UPDATE_SCREENSHOTS") == "1":
        target = ROOT / "docs" / "screenshots"
    else:
        target = ROOT / "tests" / "artifacts" / "screenshots"
    target.mkdir(parents=True, exist_ok=True)
    return target


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():  # noqa: ASYNC240 -- once per test, before anything runs
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (Debian package chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        await launched.close()


@pytest.fixture
def clock() -> ManualClock:
    """Starts at the wall clock: the browser stamps observations with its own time."""
    return ManualClock(datetime.now(UTC))


@pytest.fixture
def browser_settings(settings: EmbeddedSettings) -> EmbeddedSettings:
    """The embedded default as a newcomer runs it: development sign-in on."""
    return settings.model_copy(update={"environment": "dev"})


@pytest.fixture
async def site(browser_settings: EmbeddedSettings, clock: ManualClock) -> AsyncIterator[str]:
    app = create_app(browser_settings, clock=clock)
    async with running_server(app) as address:
        yield f"http://{address}"


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    opened = await context.new_page()
    yield opened
    await context.close()


async def snap(page: Page, name: str) -> Path:
    path = screenshot_dir() / f"{name}.png"
    await page.evaluate("window.scrollTo(0, 0)")  # so the sticky header sits at the top
    await page.screenshot(path=str(path), full_page=True)
    return path
