"""The database work websockets do on their own account, a few transactions at a time.

A socket opening (its welcome, its catch-up from `after`), its reads when woken and its
goodbye each take a transaction. Thousands of dashboards and crews reconnecting at once
(a proxy restarted, a site's network came back) would put thousands of transactions in
the pool's queue together; a crew's `POST /v1/cases`, an accepted offer or the presence
heartbeat would wait behind all of them, and past the pool's timeout fail, as would the
sockets at the back of the queue. On SQLite the process has one connection, so the
connections benchmark's 5,000 sockets did exactly that.

Here the sockets wait their turn instead, without a deadline, and no more than a few of
their transactions are in the pool's queue at any moment: everyone else's wait stays
short. What a person does over a socket (accepting an offer, changing status) does not
come through here: it is rare, rate-limited per socket, and must not queue behind a
reconnection storm.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from services.shared.db.session import SessionMaker, in_transaction

T = TypeVar("T")


def transactions_at_once(pool_size: int) -> int:
    """Half the pool (at least two, so one can start as another commits): the other half
    stays free for requests and timers."""
    return max(2, pool_size // 2)


class SocketReads:
    def __init__(self, maker: SessionMaker, *, at_once: int) -> None:
        self._maker = maker
        self._turns = asyncio.Semaphore(at_once)
        self._waiting = 0
        self.at_once = at_once

    @property
    def waiting(self) -> int:
        """Sockets waiting for a turn (`reach_socket_reads_waiting`)."""
        return self._waiting

    async def run(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """`work` in its own transaction, once a turn is free. As with `in_transaction`,
        a caller cancelled half-way (its socket closed) stops waiting but the transaction
        finishes; the turn is given back only then."""
        self._waiting += 1
        try:
            await self._turns.acquire()
        finally:
            self._waiting -= 1
        return await in_transaction(self._maker, work, ended=self._turns.release)
