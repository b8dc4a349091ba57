"""Start-up's objects kept out of the garbage collector's full passes.

A served process builds hundreds of thousands of long-lived objects before it takes its
first request (modules, the apps and their routes, schemas, mappers) and keeps them for
its life. CPython's full collection walks every one of them each time it runs, and while
it does, the event loop stands still: every request, offer and websocket in the process
waits (about 95 ms a pass for the embedded default, see `bench/RESULTS.md`). Frozen once
start-up is done, they are no longer walked, and a full collection costs what the objects
made since cost.
"""

from __future__ import annotations

import gc
from collections.abc import MutableMapping
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send


def freeze_startup_objects() -> None:
    """Collect start-up's garbage, then freeze what survives (never collected again, so
    it must be what lives as long as the process)."""
    gc.collect()
    gc.freeze()


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
