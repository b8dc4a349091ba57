"""The live streams' safety net: one look at the database for the whole process, every
`stream_poll_seconds`, instead of one per socket.

A stream sends what it is woken for (by this process, or by another through the
notifier). Should a wake-up be lost, the database still has what it said; each socket
used to look again on its own every 30 s or so, which at thousands of sockets was a
transaction every few milliseconds (and at 1,600 dashboards, 40% of the server's CPU per
message in the fan-out benchmark). Here one query per chunk of keys reads the newest seq
of everything watched — a consultant's message log, a case's stream — and only the
sockets that are behind are told to look.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial

from sqlalchemy.ext.asyncio import AsyncSession

from services.shared.db.session import SessionMaker, in_transaction
from services.shared.observability import log_failure

logger = logging.getLogger("reach.streams.seq_watch")

# Keys per query (well under any database's limit on bound parameters).
_CHUNK = 500

# Each key's newest seq, read in one statement (a key with nothing yet may be left out).
NewestSeqs = Callable[[AsyncSession, list[str]], Awaitable[dict[str, int]]]


@dataclass(frozen=True, slots=True)
class _Watcher:
    key: str
    sent: Callable[[], int]
    look_again: Callable[[], None]


class SeqWatch:
    def __init__(self, newest_seqs: NewestSeqs, *, what: str) -> None:
        self._newest_seqs = newest_seqs
        self._what = what
        self._watchers: dict[int, _Watcher] = {}
        self._next_id = 0

    @contextlib.contextmanager
    def watch(
        self, key: str, *, sent: Callable[[], int], look_again: Callable[[], None]
    ) -> Iterator[None]:
        """While the block runs, `look_again` is called when the database holds something
        for `key` past `sent()`, the last seq the socket has sent."""
        self._next_id += 1
        watcher_id = self._next_id
        self._watchers[watcher_id] = _Watcher(key, sent, look_again)
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
                log_failure(logger, f"{self._what} could not be checked", exc)

    async def look(self, maker: SessionMaker) -> None:
        """One look for every socket watching: wake those that are behind."""
        watchers = list(self._watchers.values())
        keys = sorted({w.key for w in watchers})
        newest: dict[str, int] = {}
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            newest.update(await in_transaction(maker, partial(_read, self._newest_seqs, chunk)))
        for watcher in watchers:
            if newest.get(watcher.key, 0) > watcher.sent():
                watcher.look_again()


async def _read(newest_seqs: NewestSeqs, keys: list[str], session: AsyncSession) -> dict[str, int]:
    return await newest_seqs(session, keys)
