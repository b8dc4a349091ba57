"""`reach serve` freezes what start-up built and collects the young generation less often,
before the server takes requests; the collector's pauses are timed by generation."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp

from services.shared.heap import (
    PAUSE_BUCKETS,
    YOUNG_THRESHOLD,
    FreezeAfterStartup,
    GcPauses,
    process_gc_pauses,
    register_pause_metrics,
)


@pytest.fixture(autouse=True)
def _unfrozen_after() -> Iterator[None]:
    # The test process must not keep what a test froze (its later garbage would leak),
    # nor the thresholds a test set.
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def is_frozen(thing: object) -> bool:
    """Tracked by the collector, yet in none of the generations it walks."""
    return gc.is_tracked(thing) and not any(
        candidate is thing for generation in range(3) for candidate in gc.get_objects(generation)
    )


def app_building_a_table() -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.table = {"built": [str(n) for n in range(10)]}  # lives as long as the app
        yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    return app


async def run_lifespan(served: ASGIApp, app: FastAPI) -> list[tuple[str, bool]]:
    """Start up and shut down as a server does; each message the server hears, and whether
    start-up's table was frozen when it heard it."""
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    heard: list[tuple[str, bool]] = []

    async def receive() -> dict[str, Any]:
        return next(incoming)

    async def send(message: Any) -> None:
        heard.append((message["type"], is_frozen(app.state.table)))

    await served({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    return heard


async def test_start_up_is_frozen_before_the_server_hears_it_finished() -> None:
    app = app_building_a_table()

    heard = await run_lifespan(FreezeAfterStartup(app), app)

    assert heard == [("lifespan.startup.complete", True), ("lifespan.shutdown.complete", True)]


async def test_without_it_start_up_stays_with_the_collector() -> None:
    app = app_building_a_table()

    heard = await run_lifespan(app, app)

    assert heard == [("lifespan.startup.complete", False), ("lifespan.shutdown.complete", False)]


async def test_after_start_up_the_young_generation_waits_for_the_heap_to_grow() -> None:
    app = app_building_a_table()
    gc.set_threshold(700, 10, 10)  # CPython's defaults

    await run_lifespan(FreezeAfterStartup(app), app)

    # Only the young generation's threshold is raised: the older ones' stay as they were.
    assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, 10)
    assert YOUNG_THRESHOLD > 700


async def test_requests_pass_through_unchanged() -> None:
    transport = httpx.ASGITransport(app=FreezeAfterStartup(app_building_a_table()))
    async with httpx.AsyncClient(transport=transport, base_url="http://reach.test") as client:
        response = await client.get("/ping")

    assert (response.status_code, response.json()) == (200, {"pong": "yes"})


class Stopwatch:
    """A timer the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pauses_on_a_registry() -> tuple[GcPauses, Stopwatch, CollectorRegistry]:
    stopwatch = Stopwatch()
    pauses = GcPauses(timer=stopwatch)
    registry = CollectorRegistry()
    register_pause_metrics(registry, pauses)
    return pauses, stopwatch, registry


def passes(registry: CollectorRegistry, generation: int, le: str | None = None) -> float | None:
    if le is None:
        return registry.get_sample_value(
            "reach_gc_pause_seconds_count", {"generation": str(generation)}
        )
    return registry.get_sample_value(
        "reach_gc_pause_seconds_bucket", {"generation": str(generation), "le": le}
    )


def test_a_pass_is_timed_into_its_generation_and_bucket() -> None:
    pauses, stopwatch, registry = pauses_on_a_registry()

    pauses("start", {"generation": 2})
    stopwatch.now += 0.3
    pauses("stop", {"generation": 2, "collected": 0, "uncollectable": 0})

    assert passes(registry, 2) == 1
    assert (passes(registry, 2, "0.25"), passes(registry, 2, "0.5")) == (0, 1)
    assert passes(registry, 2, "+Inf") == 1
    assert registry.get_sample_value(
        "reach_gc_pause_seconds_sum", {"generation": "2"}
    ) == pytest.approx(0.3)
    assert (passes(registry, 0), passes(registry, 1)) == (0, 0)


def test_buckets_count_every_pass_up_to_their_bound() -> None:
    pauses, stopwatch, registry = pauses_on_a_registry()

    for seconds in (0.5, 0.002):  # one exactly on a bound, one well under it
        pauses("start", {"generation": 0})
        stopwatch.now += seconds
        pauses("stop", {"generation": 0, "collected": 0, "uncollectable": 0})

    assert [passes(registry, 0, le) for le in ("0.001", "0.0025", "0.25", "0.5", "1.0")] == [
        0,
        1,
        1,
        2,
        2,
    ]
    assert passes(registry, 0) == 2


def test_the_stall_alerts_bucket_is_one_of_the_histograms() -> None:
    # deploy/prometheus/rules/alerts.yml (ReachProcessStalled) reads le="0.5".
    assert 0.5 in PAUSE_BUCKETS


def test_the_process_times_its_passes_with_one_callback_however_many_apps() -> None:
    first, second = process_gc_pauses(), process_gc_pauses()

    assert first is second
    assert sum(callback is first for callback in gc.callbacks) == 1


def test_a_pause_past_every_bound_is_counted_in_the_last_bucket_alone() -> None:
    pauses, stopwatch, registry = pauses_on_a_registry()

    pauses("start", {"generation": 1})
    stopwatch.now += 4.0
    pauses("stop", {"generation": 1, "collected": 0, "uncollectable": 0})

    assert (passes(registry, 1, "2.5"), passes(registry, 1, "+Inf")) == (0, 1)


def test_a_stop_heard_without_its_start_is_not_counted() -> None:
    # Installed while a pass was under way: its length is unknown.
    pauses, _, registry = pauses_on_a_registry()

    pauses("stop", {"generation": 2, "collected": 0, "uncollectable": 0})

    assert passes(registry, 2) == 0
