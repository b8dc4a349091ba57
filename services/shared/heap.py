"""Start-up's objects kept out of the garbage collector's full passes, the young
generation collected less often, and the collector's pauses measured.

A served process builds hundreds of thousands of long-lived objects before it takes its
first request (modules, the apps and their routes, schemas, mappers) and keeps them for
its life. CPython's full collection walks every one of them each time it runs, and while
it does, the event loop stands still: every request, offer and websocket in the process
waits (about 95 ms a pass for the embedded default, see `bench/RESULTS.md`). Frozen once
start-up is done, they are no longer walked, and a full collection costs what the objects
made since cost.

What is made since still counts: every open websocket keeps a few hundred objects the
collector tracks (its tasks, coroutines, buffers), and a full pass over a few hundred
dashboards' worth stops the process for tens of milliseconds, over thousands for
hundreds (see `bench/RESULTS.md`). `reach_gc_pause_seconds{generation}` shows how long
the passes of each generation stopped the process, so a stall has a name.
"""

from __future__ import annotations

import bisect
import gc
import time
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Receive, Scope, Send

# Upper bounds of the pause histogram's buckets, in seconds: a young pass takes well
# under a millisecond; a full pass over thousands of sockets, most of a second. The alert
# on a stalled process (deploy/prometheus/rules/alerts.yml) reads the 0.5 s bucket.
PAUSE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
GENERATIONS = 3


# Objects tracked since the last young pass that start the next (see above), as CPython
# 3.11-3.13's generational collector counts them (measured on 3.11).
YOUNG_THRESHOLD = 10_000


def prepare_heap_for_serving() -> None:
    """Collect start-up's garbage, then freeze what survives (never collected again, so
    it must be what lives as long as the process); from then on, collect the young
    generation at `YOUNG_THRESHOLD` (the older generations' thresholds as they were)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


class FreezeAfterStartup:
    """Wraps a served app: once its lifespan's start-up has finished, and before the server
    is told so (and takes requests), start-up's objects are frozen and the young
    generation's threshold raised (`prepare_heap_for_serving`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_after_freezing(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "lifespan.startup.complete":
                prepare_heap_for_serving()
            await send(message)

        await self.app(scope, receive, send_after_freezing)


class GcPauses:
    """Times each pass of the collector, by generation, as `gc.callbacks` reports them.

    A pass runs in whichever thread allocated last (the event loop's, or a database
    driver's) and holds the interpreter lock throughout (a finalizer it calls may let go
    of it briefly): the event loop, and every request and socket on it, waits. Passes
    never overlap (CPython runs one at a time), so one start time is enough. The
    callback only adds to counts it owns, taking no lock: one taken while the same thread
    held it (a pass can start inside any allocation) would never be given back. A scrape
    that reads while a pass ends in another thread may see its count without its seconds,
    until the next scrape. The start-up freeze's own collection is counted like any
    other full pass.
    """

    def __init__(self, timer: Callable[[], float] = time.perf_counter) -> None:
        self._timer = timer
        self._started: float | None = None
        # Per generation: passes per bucket (the last for longer than every bound), and
        # their seconds in all.
        self._passes = [[0] * (len(PAUSE_BUCKETS) + 1) for _ in range(GENERATIONS)]
        self._seconds = [0.0] * GENERATIONS

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = self._timer()
            return
        if self._started is None:  # timed from a pass's start only
            return
        pause, self._started = self._timer() - self._started, None
        generation = info["generation"]
        self._passes[generation][bisect.bisect_left(PAUSE_BUCKETS, pause)] += 1
        self._seconds[generation] += pause

    def histogram(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "reach_gc_pause_seconds",
            "How long each pass of Python's garbage collector stopped the process, by "
            "generation (2: a full pass over every object not frozen at start-up).",
            labels=["generation"],
        )
        for generation in range(GENERATIONS):
            passes, seconds = list(self._passes[generation]), self._seconds[generation]
            buckets, so_far = [], 0
            for bound, count in zip((*PAUSE_BUCKETS, float("inf")), passes, strict=True):
                so_far += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), so_far))
            family.add_metric([str(generation)], buckets, seconds)
        return family


class _PauseCollector(Collector):
    def __init__(self, pauses: GcPauses) -> None:
        self._pauses = pauses

    def collect(self) -> Iterator[HistogramMetricFamily]:
        yield self._pauses.histogram()


_process_pauses: GcPauses | None = None


def process_gc_pauses() -> GcPauses:
    """This process's pauses, timed from the first call on (one callback a process,
    however many apps it builds)."""
    global _process_pauses
    if _process_pauses is None:
        _process_pauses = GcPauses()
        gc.callbacks.append(_process_pauses)
    return _process_pauses


def register_pause_metrics(registry: CollectorRegistry, pauses: GcPauses) -> None:
    registry.register(_PauseCollector(pauses))
