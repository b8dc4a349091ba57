"""The embedded default's SQLite connection: short calls on the event loop, waits on a thread.

aiosqlite runs every call on the connection's own thread: a cursor, each statement, each
fetch and each close is a hand-off to that thread and a wake-up of the event loop when it
is done, and under load the thread then waits for the interpreter lock the loop holds.
SQLAlchemy makes four such calls per statement. Measured (bench/RESULTS.md): a one-row
select inside a transaction took 650 us through the thread and 90 us here.

Only two kinds of call can wait on something outside this process, and those still go to
the thread: waiting for the write lock while another process holds it (`BEGIN
IMMEDIATE`, and anything outside a transaction, which may wait up to the busy timeout) and
committing (with `synchronous=FULL`, an fsync). `BEGIN IMMEDIATE` is first tried here
without waiting: when no other process is writing — always, for the embedded default —
it takes the lock at once, and only a lock already held sends it to the thread to wait.
Everything else — statements inside a transaction that already holds the write lock,
fetches, cursors, rollbacks — runs where it is called: in WAL mode none of them waits for
another connection, and the process has one connection, used by one caller at a time
(SQLAlchemy awaits each call before making the next).
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

    def __init__(
        self, connector: Callable[[], sqlite3.Connection], *, busy_timeout_ms: int
    ) -> None:
        super().__init__(connector, iter_chunk_size=64)
        self._busy_timeout_ms = busy_timeout_ms

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        connection = self._connection
        if connection is not None and self._running:
            if _runs_here(connection, fn):
                return fn(*args, **kwargs)
            if _is_begin(connection, fn, args) and self._begin_if_free(connection, fn, args):
                return None
        return await super()._execute(fn, *args, **kwargs)  # type: ignore[no-untyped-call]

    def _begin_if_free(
        self, connection: sqlite3.Connection, begin: Callable[..., Any], args: tuple[Any, ...]
    ) -> bool:
        """Take the write lock here if no one holds it; False if someone does (then the
        thread waits for it, up to the busy timeout)."""
        connection.execute("PRAGMA busy_timeout=0")
        try:
            begin(*args)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
                return False
            raise
        finally:
            connection.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
        return True


def _is_begin(
    connection: sqlite3.Connection, fn: Callable[..., Any], args: tuple[Any, ...]
) -> bool:
    return (
        isinstance(getattr(fn, "__self__", None), sqlite3.Cursor)
        and getattr(fn, "__name__", "") == "execute"
        and not connection.in_transaction
        and bool(args)
        and args[0] == "BEGIN IMMEDIATE"
    )


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

    connection = InlineConnection(connector, busy_timeout_ms=round(timeout * 1000))
    # As in SQLAlchemy's own aiosqlite set-up: the thread must not keep the process alive.
    connection._thread.daemon = True
    await connection  # starts the thread, which opens the database
    return connection
