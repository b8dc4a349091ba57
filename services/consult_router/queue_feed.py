"""The open queue, broadcast to every dashboard connected to this process.

When the queue changes, one task reads it once, encodes it once and hands the same bytes
to every consultant's socket (each with its own `seq`). Were each socket to read the queue
itself, one new case would cost a query, an encoding and several task switches per
connected dashboard.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterator

from services.consult_router.schemas import QueueItem
from services.shared.notify import Notifier
from services.shared.observability import log_failure

logger = logging.getLogger("reach.router.queue")

# One refresh for a burst of changes (a case submitted, offered and accepted in a blink).
DEBOUNCE_SECONDS = 0.2

Deliver = Callable[[str], Awaitable[None]]
LoadQueue = Callable[[], Awaitable[list[QueueItem]]]


def encode_items(items: list[QueueItem]) -> str:
    return json.dumps([item.model_dump(mode="json") for item in items], separators=(",", ":"))


class QueueFeed:
    def __init__(self) -> None:
        self._watchers: dict[int, Deliver] = {}
        self._next_id = 0

    @contextlib.contextmanager
    def watch(self, deliver: Deliver) -> Iterator[None]:
        """While the block runs, `deliver` gets the encoded items on every change."""
        self._next_id += 1
        watcher_id = self._next_id
        self._watchers[watcher_id] = deliver
        try:
            yield
        finally:
            self._watchers.pop(watcher_id, None)

    async def run(
        self, stopping: asyncio.Event, *, notifier: Notifier, channel: str, load: LoadQueue
    ) -> None:
        with notifier.subscribe(channel) as changed:
            while not stopping.is_set():
                if not await changed.wait(None, stopping=stopping):
                    continue
                await asyncio.sleep(DEBOUNCE_SECONDS)
                changed.drain_keys()
                if self._watchers:
                    await self.broadcast(await load())

    async def broadcast(self, items: list[QueueItem]) -> None:
        encoded = encode_items(items)
        for deliver in list(self._watchers.values()):
            try:
                await deliver(encoded)
            except Exception as exc:  # that socket is closing; its own tasks clean up
                log_failure(logger, "queue delivery to one dashboard failed", exc)
