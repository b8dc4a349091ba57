"""The consultants' streams' safety net: one look at the message log for the whole
process, every `stream_poll_seconds`.

A stream sends a consultant's logged messages when it is woken (by this process, or by
another through the notifier). Should a wake-up be lost, the log still has the message;
each socket used to look again on its own every 30 s or so, which at thousands of
dashboards was a transaction every few milliseconds (and at 1,600 dashboards, 40% of the
server's CPU per message in the fan-out benchmark). Here one query reads every watched
consultant's newest seq, and only the sockets that are behind are told to look.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

from services.consult_router.repository import messages as message_repo
from services.shared.db.session import SessionMaker, in_transaction
from services.shared.observability import log_failure

logger = logging.getLogger("reach.router.log_watch")

# Consultants per query (well under any database's limit on bound parameters).
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class _Watcher:
    consultant_id: str
    sent: Callable[[], int]
    look_again: Callable[[], None]


class LogWatch:
    def __init__(self) -> None:
        self._watchers: dict[int, _Watcher] = {}
        self._next_id = 0

    @contextlib.contextmanager
    def watch(
        self, consultant_id: str, *, sent: Callable[[], int], look_again: Callable[[], None]
    ) -> Iterator[None]:
        """While the block runs, `look_again` is called when the log holds a message for
        the consultant past `sent()`, the last seq the socket has sent."""
        self._next_id += 1
        watcher_id = self._next_id
        self._watchers[watcher_id] = _Watcher(consultant_id, sent, look_again)
        try:
            yield
        finally:
            self._watchers.pop(watcher_id, None)

    async def run(self, stopping: asyncio.Event, *, maker: SessionMaker, interval: float) -> None:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval)
            if stopping.is_set() or not self._watchers:
                continue
            try:
                await self.look(maker)
            except Exception as exc:  # the database is away: the next look tries again
                log_failure(logger, "the message log could not be checked", exc)

    async def look(self, maker: SessionMaker) -> None:
        """One look for every socket watching: wake those whose consultant is ahead."""
        watchers = list(self._watchers.values())
        consultants = sorted({w.consultant_id for w in watchers})
        newest: dict[str, int] = {}
        for start in range(0, len(consultants), _CHUNK):
            chunk = consultants[start : start + _CHUNK]
            read = partial(message_repo.newest_seqs, consultant_ids=chunk)
            newest.update(await in_transaction(maker, read))
        for watcher in watchers:
            if newest.get(watcher.consultant_id, 0) > watcher.sent():
                watcher.look_again()
