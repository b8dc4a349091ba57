"""Start-up's objects kept out of the garbage collector's full passes.

A served process builds hundreds of thousands of long-lived objects before it takes its
first request (modules, the apps and their routes, schemas, mappers) and keeps them for
its life. CPython's full collection walks every one of them each time it runs, and while
it does, the event loop stands still: every request, offer and websocket in the process
waits (about 95 ms a pass for the embedded default, see `bench/RESULTS.md`). Frozen once
start-up is done, they are no longer walked, and a full collection costs what the objects
made since cost.

The young generation is also let grow, so that a request's objects are mostly gone before
the collector looks (`YOUNG_GENERATION_THRESHOLD`).
"""

from __future__ import annotations

import gc
from collections.abc import MutableMapping
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

# How many objects the young generation takes before it is collected. With CPython's 700,
# triage-api taking 16 submissions at a time ran the collector once every 20-25 requests,
# walking the objects of the requests still in flight: 38-55 us a request in the young and
# middle generations. At 7,000 most of them are gone before a pass: 4 passes in 3,500
# requests, 2.3-2.8 us a request, the longest no longer than before (2.2-3.7 ms against
# 1.9-3.9). See bench/RESULTS.md. The older generations keep CPython's settings.
YOUNG_GENERATION_THRESHOLD = 7_000


def freeze_startup_objects() -> None:
    """Collect start-up's garbage, then freeze what survives (never collected again, so
    it must be what lives as long as the process), and let the young generation grow
    (`YOUNG_GENERATION_THRESHOLD`)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, old)


class FreezeAfterStartup:
    """Wraps a served app: once its lifespan's start-up has finished, and before the server
    is told so (and takes requests), start-up's objects are frozen."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_after_freezing(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "lifespan.startup.complete":
                freeze_startup_objects()
            await send(message)

        await self.app(scope, receive, send_after_freezing)
