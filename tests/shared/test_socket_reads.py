"""Sockets' own transactions take turns: only a few are ever in the pool's queue, the
rest wait without a deadline, and a turn is held until its transaction has ended."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.shared.db.engine import create_engine
from services.shared.db.session import SessionMaker, create_sessionmaker
from services.shared.db.socket_reads import SocketReads, transactions_at_once
from tests.support import eventually


class Refused(Exception):
    pass


@pytest.fixture
async def maker(database_url: str) -> AsyncIterator[SessionMaker]:
    engine = create_engine(database_url)
    try:
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()


def test_half_the_pool_and_never_fewer_than_two() -> None:
    assert [transactions_at_once(size) for size in (1, 4, 10, 40)] == [2, 2, 5, 20]


async def test_a_storm_of_sockets_takes_turns(maker: SessionMaker) -> None:
    reads = SocketReads(maker, at_once=2)
    go = asyncio.Event()
    started: list[int] = []

    async def read(number: int, session: AsyncSession) -> int:
        started.append(number)
        await go.wait()
        return int((await session.execute(text(f"SELECT {number}"))).scalar_one())

    sockets = [asyncio.create_task(reads.run(partial(read, n))) for n in range(10)]
    await eventually(lambda: reads.waiting == 8, message="eight sockets should wait their turn")
    assert len(started) <= 2  # SQLite's one connection lets only one in at a time
    go.set()
    assert await asyncio.gather(*sockets) == list(range(10))
    assert reads.waiting == 0


async def test_a_socket_that_leaves_mid_transaction_keeps_its_turn_until_it_ends(
    maker: SessionMaker,
) -> None:
    reads = SocketReads(maker, at_once=1)
    began, go = asyncio.Event(), asyncio.Event()
    finished: list[str] = []

    async def slow(session: AsyncSession) -> None:
        began.set()
        await go.wait()
        await session.execute(text("SELECT 1"))
        finished.append("the first transaction")

    async def next_in_line(session: AsyncSession) -> None:
        finished.append("the next one")

    leaving = asyncio.create_task(reads.run(slow))
    await asyncio.wait_for(began.wait(), timeout=10)
    leaving.cancel()  # its socket closed
    waiting = asyncio.create_task(reads.run(next_in_line))
    for _ in range(20):
        await asyncio.sleep(0)
    assert reads.waiting == 1
    assert finished == []
    go.set()
    await waiting
    assert finished == ["the first transaction", "the next one"]
    assert leaving.cancelled()


async def test_a_failed_transaction_reaches_its_socket_and_gives_its_turn_back(
    maker: SessionMaker,
) -> None:
    reads = SocketReads(maker, at_once=1)

    async def refuse(session: AsyncSession) -> None:
        raise Refused

    with pytest.raises(Refused):
        await reads.run(refuse)

    async def answer(session: AsyncSession) -> int:
        return int((await session.execute(text("SELECT 7"))).scalar_one())

    assert await asyncio.wait_for(reads.run(answer), timeout=10) == 7
