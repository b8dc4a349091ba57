"""Async engines for SQLite (the embedded default) and PostgreSQL.

SQLite runs in WAL mode with `synchronous=FULL` (a committed case survives a power cut)
and one connection per process: SQLite has one writer at a time, and queueing for our own
pool is fairer and faster than spinning on `SQLITE_BUSY`. Every transaction starts with
`BEGIN IMMEDIATE`, so a read that later writes cannot fail to upgrade its lock when
several processes share the file. The connection runs its short calls on the event loop
and only the lock and the commit on a thread (`sqlite_inline`).
JSON columns are written and read with `services.shared.jsoncodec`.
"""

from __future__ import annotations

import sqlite3
from functools import partial
from typing import Any

import asyncpg.exceptions as asyncpg_errors
import sqlalchemy.exc as sqlalchemy_errors
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.shared.db import sqlite_inline
from services.shared.jsoncodec import json_text, load_json

SQLITE_BUSY_TIMEOUT_MS = 30_000


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def is_postgres(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


def create_engine(
    url: str, *, pool_size: int = 10, pool_timeout: float = 30.0, echo: bool = False
) -> AsyncEngine:
    if is_sqlite(url):
        database = make_url(url).database or ":memory:"
        engine = create_async_engine(
            url,
            echo=echo,
            json_serializer=json_text,
            json_deserializer=load_json,
            pool_size=1,
            max_overflow=0,
            pool_timeout=pool_timeout,
            async_creator=partial(
                sqlite_inline.connect, database, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000
            ),
        )
        _configure_sqlite(engine)
        return engine
    if is_postgres(url):
        engine = create_async_engine(
            url,
            echo=echo,
            json_serializer=json_text,
            json_deserializer=load_json,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_timeout=pool_timeout,
            # Fail fast when the database is gone, so /readyz and callers see it in seconds.
            connect_args={"timeout": 5, "command_timeout": 60},
        )
        _configure_postgres(engine)
        return engine
    raise ValueError("REACH_DATABASE_URL must be sqlite+aiosqlite:// or postgresql+asyncpg://")


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide where transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    # The dialect's own hook for beginning (SQLite's does nothing, leaving it to the
    # driver): a failure here is wrapped like any statement's. Straight to the driver's
    # cursor, it costs a third of a statement sent through SQLAlchemy, every transaction.
    engine.sync_engine.dialect.do_begin = _begin_immediate  # type: ignore[method-assign]


def _begin_immediate(dbapi_connection: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("BEGIN IMMEDIATE")
    finally:
        cursor.close()


def _configure_postgres(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "checkout")
    def _refuse_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        """A pooled connection the server has closed (a restart, a failover, an idle
        timeout) is swapped for a new one before anyone uses it.

        asyncpg notices the server closing the socket as soon as the event loop reads it,
        so this costs no round trip. SQLAlchemy's `pool_pre_ping` would ask the server
        instead, in three round trips on every checkout: more than many of our
        transactions spend on their own statements.
        """
        if dbapi_connection.driver_connection.is_closed():
            raise sqlalchemy_errors.DisconnectionError("the server closed this connection")


# Failures that mean "the database cannot take this right now" (down, restarting, the
# network, every pooled connection busy; or, on PostgreSQL, the transaction broken off to
# end a deadlock or a serialization conflict, as SQLite's busy lock below), not "this
# request is wrong" nor a bug: the same request, sent again, goes through.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg_errors.PostgresConnectionError,
    asyncpg_errors.OperatorInterventionError,
    asyncpg_errors.InterfaceError,
    asyncpg_errors.TransactionRollbackError,
    sqlalchemy_errors.TimeoutError,
)


def database_unreachable(exc: BaseException) -> bool:
    """Whether `exc`, or what caused it, says the database could not be reached, or
    broke the transaction off to end a conflict with another.

    Such a failure is answered with 503 and `Retry-After`, and the client retries: the
    crew's app keeps its Idempotency-Key, so a retry never makes a second case.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _UNREACHABLE):
            return True
        if isinstance(current, sqlalchemy_errors.DBAPIError) and current.connection_invalidated:
            return True
        if _sqlite_busy(current):
            return True
        wrapped = getattr(current, "orig", None)  # a DBAPIError's driver error
        if isinstance(wrapped, BaseException) and wrapped is not current:
            current = wrapped
        else:
            current = current.__cause__ or current.__context__
    return False


_UNIQUE_VIOLATION = "23505"  # PostgreSQL's SQLSTATE


def key_taken(exc: BaseException) -> bool:
    """Whether `exc` is an insert refused because a row holds one of its unique keys
    already (not any other integrity error: a foreign key, a null, a check)."""
    if not isinstance(exc, sqlalchemy_errors.IntegrityError):
        return False
    driver_error = exc.orig
    if isinstance(driver_error, sqlite3.IntegrityError):
        return str(driver_error).startswith("UNIQUE constraint failed")
    return getattr(driver_error, "sqlstate", None) == _UNIQUE_VIOLATION


def _sqlite_busy(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)
