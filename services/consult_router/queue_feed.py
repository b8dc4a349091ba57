"""The open queue, broadcast to every dashboard connected to this process.

When the queue changes, one task reads it, encoded once (`QueueLines`), and hands the same
bytes to every consultant's socket (each with its own `seq`). Were each socket to read the
queue itself, one new case would cost a query, an encoding and several task switches per
connected dashboard.

The sockets are sent to one after another, and a send waits while that socket's buffers
are full: a dashboard whose reader has stopped (a network that no longer acknowledges,
without closing) would hold up every other dashboard's queue, indefinitely. So each send
has a time limit, and a dashboard that misses it is dropped: told to go (its socket is
closed, and the client reconnects to a fresh welcome) and never waited for again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from services.shared.notify import Notifier
from services.shared.observability import log_failure

logger = logging.getLogger("reach.router.queue")

# One refresh for a burst of changes (a case submitted, offered and accepted in a blink).
DEBOUNCE_SECONDS = 0.2
# A refresh reads and encodes the whole queue (up to 500 cases). When the queue is long
# (a backlog, every consultant busy) refreshes come further apart, so that reading and
# encoding it take at most this share of the time, leaving the rest to routing; the
# pause after one never exceeds the longest pause.
REFRESH_SHARE = 0.05
LONGEST_PAUSE_SECONDS = 2.0
# A healthy socket takes a send at once (the kernel's buffers hold many queues); one that
# has not taken it in this long has stopped reading.
SEND_TIMEOUT_SECONDS = 5.0

Deliver = Callable[[str], Awaitable[None]]
# The open queue's items, encoded (`QueueLines.encoded`).
LoadQueue = Callable[[], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class _Watcher:
    deliver: Deliver
    drop: Callable[[], None]


def pause_after(refresh_seconds: float) -> float:
    """How long changes gather before the next refresh, given how long the last took:
    the debounce, or longer if refreshes would otherwise take more than their share."""
    fair = refresh_seconds * (1 - REFRESH_SHARE) / REFRESH_SHARE
    return min(max(DEBOUNCE_SECONDS, fair), LONGEST_PAUSE_SECONDS)


class QueueFeed:
    def __init__(self, *, send_timeout_seconds: float = SEND_TIMEOUT_SECONDS) -> None:
        self._watchers: dict[int, _Watcher] = {}
        self._next_id = 0
        self._send_timeout = send_timeout_seconds

    @contextlib.contextmanager
    def watch(self, deliver: Deliver, *, drop: Callable[[], None]) -> Iterator[None]:
        """While the block runs, `deliver` gets the encoded items on every change; `drop`
        is called, once, if a delivery does not finish in time."""
        self._next_id += 1
        watcher_id = self._next_id
        self._watchers[watcher_id] = _Watcher(deliver, drop)
        try:
            yield
        finally:
            self._watchers.pop(watcher_id, None)

    async def run(
        self, stopping: asyncio.Event, *, notifier: Notifier, channel: str, load: LoadQueue
    ) -> None:
        loop = asyncio.get_running_loop()
        pause = DEBOUNCE_SECONDS
        with notifier.subscribe(channel) as changed:
            while not stopping.is_set():
                if not await changed.wait(None, stopping=stopping):
                    continue
                await asyncio.sleep(pause)
                changed.drain_keys()
                if self._watchers:
                    # The read and the encoding: the sends wait on sockets, whose own
                    # time limit deals with one that stopped reading.
                    started = loop.time()
                    encoded = await load()
                    pause = pause_after(loop.time() - started)
                    await self.broadcast_encoded(encoded)

    async def broadcast_encoded(self, encoded: str) -> None:
        watchers = list(self._watchers.items())
        position = 0
        while position < len(watchers):
            try:
                position = await self._send_from(position, watchers, encoded)
            except TimeoutError:  # the send at `position` did not finish in time
                watcher_id, watcher = watchers[position]
                position += 1
                self._watchers.pop(watcher_id, None)
                logger.warning(
                    "a dashboard took no queue for %.0f s; dropping it", self._send_timeout
                )
                watcher.drop()

    async def _send_from(
        self, position: int, watchers: list[tuple[int, _Watcher]], encoded: str
    ) -> int:
        """Send to the watchers from `position` on; the position reached. One deadline
        for the lot, moved on only when half of it has gone, so that a send costs no
        timer of its own (one each was a third of the broadcast's CPU): a send that
        hangs is cut off between half the limit and the limit after it began."""
        loop = asyncio.get_running_loop()
        half = self._send_timeout / 2
        async with asyncio.timeout(None) as deadline:
            while position < len(watchers):
                now = loop.time()
                due = deadline.when()
                if due is None or due - now < half:
                    deadline.reschedule(now + self._send_timeout)
                try:
                    await watchers[position][1].deliver(encoded)
                except Exception as exc:  # that socket is closing; its own tasks clean up
                    log_failure(logger, "queue delivery to one dashboard failed", exc)
                position += 1
        return position
