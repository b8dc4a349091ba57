"""The SQLite connection runs short calls on the event loop and waits on its own thread."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.shared.db.engine import SQLITE_BUSY_TIMEOUT_MS, create_engine
from services.shared.db.sqlite_inline import InlineConnection


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'inline.db'}")
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE note (id INTEGER PRIMARY KEY, body TEXT)"))
    yield engine
    await engine.dispose()


async def _driver(engine: AsyncEngine) -> InlineConnection:
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        driver = raw.driver_connection
        assert isinstance(driver, InlineConnection)
        return driver


async def test_statements_and_a_free_lock_run_on_the_loop_and_the_flush_on_the_thread(
    engine: AsyncEngine,
) -> None:
    driver = await _driver(engine)
    where: list[tuple[str, bool]] = []
    loop_thread = threading.get_ident()
    driver._conn.set_trace_callback(
        lambda sql: where.append((sql.split()[0].upper(), threading.get_ident() == loop_thread))
    )
    async with engine.begin() as connection:
        await connection.execute(text("INSERT INTO note (body) VALUES ('first')"))
        rows = (await connection.execute(text("SELECT body FROM note"))).all()
    driver._conn.set_trace_callback(None)

    assert [row.body for row in rows] == ["first"]
    assert where == [
        ("PRAGMA", True),  # no waiting for the lock...
        ("BEGIN", True),  # ...which no other process holds: taken here
        ("PRAGMA", True),  # the busy timeout back, for the next that may have to wait
        ("INSERT", True),
        ("SELECT", True),
        ("COMMIT", False),  # an fsync: the thread
    ]
    assert await busy_timeout_ms(engine) == SQLITE_BUSY_TIMEOUT_MS


async def test_waiting_for_another_writer_leaves_the_loop_free(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    other = sqlite3.connect(tmp_path / "inline.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    ticks = 0

    async def write() -> None:
        async with engine.begin() as connection:
            await connection.execute(text("INSERT INTO note (body) VALUES ('waited')"))

    driver = await _driver(engine)
    where: list[tuple[str, bool]] = []
    loop_thread = threading.get_ident()
    driver._conn.set_trace_callback(
        lambda sql: where.append((sql.split()[0].upper(), threading.get_ident() == loop_thread))
    )
    writer = asyncio.create_task(write())
    while ticks < 20:  # the loop keeps turning while the writer waits for the lock
        await asyncio.sleep(0.005)
        ticks += 1
    assert not writer.done()
    other.execute("COMMIT")
    other.close()
    await asyncio.wait_for(writer, timeout=10)
    driver._conn.set_trace_callback(None)

    # Tried here without waiting, refused, then waited for on the thread.
    assert where[:4] == [("PRAGMA", True), ("BEGIN", True), ("PRAGMA", True), ("BEGIN", False)]
    assert await busy_timeout_ms(engine) == SQLITE_BUSY_TIMEOUT_MS

    async with engine.connect() as connection:
        bodies = (await connection.execute(text("SELECT body FROM note"))).scalars().all()
    assert bodies == ["waited"]


async def busy_timeout_ms(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(text("PRAGMA busy_timeout"))).scalar_one())


async def test_a_failed_statement_leaves_the_connection_usable(engine: AsyncEngine) -> None:
    async def insert_twice() -> None:
        async with engine.begin() as connection:
            await connection.execute(text("INSERT INTO note (id, body) VALUES (1, 'a')"))
            await connection.execute(text("INSERT INTO note (id, body) VALUES (1, 'b')"))

    with pytest.raises(IntegrityError, match="UNIQUE"):
        await insert_twice()
    async with engine.begin() as connection:
        await connection.execute(text("INSERT INTO note (id, body) VALUES (1, 'c')"))
    async with engine.connect() as connection:
        bodies = (await connection.execute(text("SELECT body FROM note"))).scalars().all()
    assert bodies == ["c"]
