"""Pooled PostgreSQL connections the server has closed are replaced before anyone uses
them, without a round trip on every checkout."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import text

from services.shared.db.engine import create_engine
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
