"""The embedded default's SQLite connection: short calls on the event loop, waits on a thread.

aiosqlite runs every call on the connection's own thread: a cursor, each statement, each
fetch and each close is a hand-off to that thread and a wake-up of the event loop when it
is done, and under load the thread then waits for the interpreter lock the loop holds.
SQLAlchemy makes four such calls per statement. Measured (bench/RESULTS.md): a one-row
select inside a transaction took 650 us through the thread and 90 us here.

Only two kinds of call can wait on something outside this process, and those still go to
the thread: taking the write lock (`BEGIN IMMEDIATE`, and anything outside a transaction,
which may wait up to the busy timeout while another process writes) and committing (with
`synchronous=FULL`, an fsync). Everything else — statements inside a transaction that
already holds the write lock, fetches, cursors, rollbacks — runs where it is called: in
WAL mode none of them waits for another connection, and the process has one connection,
used by one caller at a time (SQLAlchemy awaits each call before making the next).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import aiosqlite

# Calls on a cursor that never wait for a lock or the disk's flush.
_CURSOR_CALLS_HERE = frozenset({"fetchone", "fetchmany", "fetchall", "close"})
# Statements: here only inside a transaction, whose write lock is already held.
_STATEMENTS = frozenset({"execute", "executemany"})
# On the connection: a new cursor, or a rollback (WAL discards, nothing is flushed).
_CONNECTION_CALLS_HERE = frozenset({"cursor", "rollback"})


class InlineConnection(aiosqlite.Connection):
    """An aiosqlite connection that keeps its thread for the calls that may wait."""

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        connection = self._connection
        if connection is not None and self._running and _runs_here(connection, fn):
            return fn(*args, **kwargs)
        return await super()._execute(fn, *args, **kwargs)  # type: ignore[no-untyped-call]


def _runs_here(connection: sqlite3.Connection, fn: Callable[..., Any]) -> bool:
    owner = getattr(fn, "__self__", None)
    name = getattr(fn, "__name__", "")
    if isinstance(owner, sqlite3.Cursor):
        if name in _CURSOR_CALLS_HERE:
            return True
        return name in _STATEMENTS and connection.in_transaction
    if owner is connection:
        return name in _CONNECTION_CALLS_HERE
    return False


async def connect(database: str, *, timeout: float) -> InlineConnection:
    """Like `aiosqlite.connect`, but the sqlite3 connection is shared between threads: the
    calls above run on the loop's thread, the rest on the connection's own, one at a time."""

    def connector() -> sqlite3.Connection:
        return sqlite3.connect(database, timeout=timeout, check_same_thread=False)

    connection = InlineConnection(connector, iter_chunk_size=64)
    # As in SQLAlchemy's own aiosqlite set-up: the thread must not keep the process alive.
    connection._thread.daemon = True
    await connection  # starts the thread, which opens the database
    return connection
