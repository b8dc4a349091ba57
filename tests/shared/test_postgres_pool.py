"""Pooled PostgreSQL connections the server has closed are replaced before anyone uses
them, without a round trip on every checkout; a transaction the server breaks off is
one to send again."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.shared.db.engine import create_engine, database_unreachable
from tests.support import asyncpg_dsn, eventually


@pytest.mark.postgres
async def test_a_connection_the_server_closed_is_replaced_before_use(postgres_url: str) -> None:
    engine = create_engine(postgres_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            first = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            driver = (await connection.get_raw_connection()).driver_connection
        assert isinstance(driver, asyncpg.Connection)
        admin = await asyncpg.connect(asyncpg_dsn(postgres_url))
        try:  # as a restart or a failover would
            await admin.execute("SELECT pg_terminate_backend($1)", first)
        finally:
            await admin.close()
        await eventually(lambda: driver.is_closed())
        async with engine.connect() as connection:
            second = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        assert second != first
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_a_transaction_broken_off_to_end_a_deadlock_is_one_to_retry(
    postgres_url: str,
) -> None:
    """Answered 503 with Retry-After (`install_common`), not 500: sent again, it goes
    through."""
    engine = create_engine(postgres_url, pool_size=2)
    try:
        async with engine.connect() as first, engine.connect() as second:
            await first.execute(text("SELECT pg_advisory_xact_lock(1)"))
            await second.execute(text("SELECT pg_advisory_xact_lock(2)"))
            # Each asks for the lock the other holds: the server ends one of the two.
            outcomes = await asyncio.gather(
                _lock(first, 2), _lock(second, 1), return_exceptions=True
            )
        failures = [outcome for outcome in outcomes if isinstance(outcome, Exception)]
        assert len(failures) == 1
        assert database_unreachable(failures[0])
    finally:
        await engine.dispose()


async def _lock(connection: AsyncConnection, key: int) -> None:
    try:
        await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    except Exception:
        await connection.rollback()  # its locks go, and the other goes on
        raise
