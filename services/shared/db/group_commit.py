"""Group commit: the writes that arrive while one transaction runs share the next one.

Under load most of a small write's cost is not its own work but the fixed price of a
transaction and of each statement: taking the pooled connection, BEGIN, one round trip
(or, on SQLite, one hop to the driver's thread) per statement, COMMIT. Requests that
arrive while a batch is being written queue here and are written together, one
multi-row statement per table, by a writer task that lives only while there is work.
Nothing waits on purpose: a lone request is written at once, in a batch of one.

On PostgreSQL more than one batch may be written at once (`writers`): while one waits on
the server's round trips the process would otherwise sit idle with every request queued
behind it (a tenth of triage-api's time under the submission benchmark). Writes that
arrive together are shared evenly between the writers free to take them, so that they
are in several batches, not one. SQLite has one connection per process, so there a
second writer would only wait its turn.

A batch is an optimisation, never the authority. The writer says, item by item, whether
it stored it; an item it did not store (a unique key already taken, say) — or every item,
if the batch failed, a key taken by one of them included — goes back to its caller, who
does it alone on the ordinary path and gets that path's precise answer.

A batch is written in `unit_of_work`, or in another unit of work the owner chooses
(`opened`): triage-api's new cases go in `written_at_commit`, one statement on PostgreSQL,
which a unique key already taken fails whole. Such a batch is written once more, in a
unit of work, by the owner's writer that tells its items apart (`keys_apart`), so one
taken key sends only its own item down the ordinary path.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from services.shared.db.engine import database_unreachable, key_taken
from services.shared.db.session import SessionMaker, in_transaction, unit_of_work
from services.shared.observability import log_failure

logger = logging.getLogger("reach.db.group_commit")

T = TypeVar("T")

# Writes the items in the caller's transaction; says for each whether it was stored.
WriteBatch = Callable[[AsyncSession, Sequence[T]], Awaitable[Sequence[bool]]]


class GroupCommit(Generic[T]):
    def __init__(
        self,
        maker: SessionMaker,
        write: WriteBatch[T],
        *,
        max_batch: int,
        name: str,
        writers: int = 1,
        opened: Callable[[SessionMaker], AbstractAsyncContextManager[AsyncSession]] = unit_of_work,
        keys_apart: WriteBatch[T] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("a batch holds at least one item")
        if writers < 1:
            raise ValueError("a group commit needs a writer")
        self._maker = maker
        self._write = write
        self._max_batch = max_batch
        self._name = name
        self._pending: deque[tuple[T, asyncio.Future[bool]]] = deque()
        self._max_writers = writers
        self._writers: set[asyncio.Task[None]] = set()
        self._writing = 0  # writers with a batch at the database
        self._opened = opened
        self._keys_apart = keys_apart

    async def submit(self, item: T) -> bool:
        """True once `item` is committed; False if the batch left it to the caller."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        # Every writer is started as writes arrive, so those arriving together find the
        # others there to share them with (`_share`).
        if len(self._writers) < self._max_writers:
            writer = asyncio.create_task(self._drain(), name=f"{self._name}-group-commit")
            self._writers.add(writer)
            writer.add_done_callback(self._writers.discard)  # cancelled before it began
        # A caller that stops waiting (its client went away) leaves the item in the batch:
        # it is written all the same, as it would have been on the ordinary path.
        return await future

    def _share(self) -> int:
        """How many of the pending items a writer takes: an even share with the writers
        not busy with a batch, who take the rest at once. Callers who arrived together
        then wait in several batches whose round trips overlap, and come back at
        different moments, so one group's requests are worked on while another's batch is
        at the server (one batch of all of them left the loop idle for the whole of its
        round trips)."""
        sharing = self._max_writers - self._writing  # this writer among them
        even = -(-len(self._pending) // sharing)
        return min(even, self._max_batch)

    async def _drain(self) -> None:
        batch: list[tuple[T, asyncio.Future[bool]]] = []
        try:
            while self._pending:
                batch = [self._pending.popleft() for _ in range(self._share())]
                self._writing += 1
                try:
                    stored = await self._write_batch([item for item, _ in batch])
                finally:
                    self._writing -= 1
                for (_, future), done in zip(batch, stored, strict=True):
                    _settle(future, done)
                batch = []
        finally:
            # Only a shutdown cancels a writer: whoever is still waiting does it alone.
            for _, future in [*batch, *self._pending]:
                _settle(future, False)
            self._pending.clear()
            # Gone from the count now, not when its done-callbacks run: a caller woken by
            # this batch may submit again before then, and must find a writer to start.
            self._writers.discard(asyncio.current_task())

    async def _write_batch(self, items: list[T]) -> Sequence[bool]:
        try:
            try:
                stored = await in_transaction(
                    self._maker, lambda session: self._write(session, items), opened=self._opened
                )
            except Exception as exc:
                if self._keys_apart is None or not key_taken(exc):
                    raise
                # The writer left it to the database to find a key taken, which failed
                # the whole batch: once more, each item's key told apart.
                logger.info("%s: a key of a batch of %d was taken", self._name, len(items))
                keys_apart = self._keys_apart
                stored = await in_transaction(self._maker, lambda s: keys_apart(s, items))
        except Exception as exc:  # each caller retries alone and gets its own answer
            if database_unreachable(exc):  # an outage: each request says so itself (503)
                logger.warning("%s: database unreachable; %d go alone", self._name, len(items))
            else:
                log_failure(logger, f"{self._name}: a batch of {len(items)} failed", exc)
            return [False] * len(items)
        if len(stored) != len(items):  # a defect in the writer: trust none of its answers
            logger.error("%s: the batch writer answered for %d of %d items",
                         self._name, len(stored), len(items))  # fmt: skip
            return [False] * len(items)
        return stored


def _settle(future: asyncio.Future[bool], stored: bool) -> None:
    if not future.done():
        future.set_result(stored)
