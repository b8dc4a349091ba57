"""The one migration history: it upgrades, downgrades to nothing and upgrades again on
both databases, has a single head, and agrees with the models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from services.shared.db import migrate
from services.shared.db.engine import create_engine
from services.shared.db.models import Base
from tests import support


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        return
    request.getfixturevalue("postgres_url")  # skips, or fails under CI, without a server
    admin = support.postgres_admin_url()
    name = f"reach_migrations_{id(request)}"
    yield support.run_blocking(support.recreate_postgres_database(admin, name))
    support.run_blocking(support.drop_postgres_database(admin, name))


async def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            names: list[str] = await connection.run_sync(
                lambda sync: inspect(sync).get_table_names()
            )
    finally:
        await engine.dispose()
    return set(names) - {"alembic_version"}


async def drift(url: str) -> list[Any]:
    def compare(sync: Connection) -> list[Any]:
        context = MigrationContext.configure(sync, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(compare)
    finally:
        await engine.dispose()


class TestHistory:
    def test_there_is_one_head(self) -> None:
        assert len(migrate.heads()) == 1

    async def test_upgrade_downgrade_upgrade(self, empty_database: str) -> None:
        expected = {table.name for table in Base.metadata.sorted_tables}
        support.in_thread(migrate.upgrade, empty_database)
        assert await table_names(empty_database) == expected
        support.in_thread(migrate.downgrade, empty_database, "base")
        assert await table_names(empty_database) == set()
        support.in_thread(migrate.upgrade, empty_database)
        assert await table_names(empty_database) == expected

    async def test_the_models_and_the_migrations_agree(self, empty_database: str) -> None:
        support.in_thread(migrate.upgrade, empty_database)
        assert await drift(empty_database) == []

    async def test_every_table_carries_its_owners_prefix(self) -> None:
        owners = ("triage_", "consult_", "audit_")
        assert all(table.name.startswith(owners) for table in Base.metadata.sorted_tables)
