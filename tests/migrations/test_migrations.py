"""The one migration history: it upgrades, downgrades to nothing and upgrades again on
both databases, has a single head, and agrees with the models."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, inspect, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from services.shared.db import migrate
from services.shared.db.base import table_of
from services.shared.db.engine import create_engine
from services.shared.db.models import Base, ConsultCase, ConsultConsultant, ConsultOffer
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

    async def test_one_open_offer_a_consultant_names_who_holds_two(
        self, empty_database: str
    ) -> None:
        """0005's unique index cannot be built over two open offers to one consultant:
        the upgrade says whose, changes nothing, and goes through once one is closed."""
        support.in_thread(migrate.upgrade, empty_database, "0004")
        engine = create_engine(empty_database)
        try:
            async with engine.begin() as connection:
                await _two_open_offers(connection, "dr-doubled")
            with pytest.raises(RuntimeError, match="dr-doubled"):
                support.in_thread(migrate.upgrade, empty_database)
            assert await migrate.current_revision(engine) == "0004"
            async with engine.begin() as connection:
                await connection.execute(
                    update(table_of(ConsultOffer))
                    .where(table_of(ConsultOffer).c.id == "offer-2")
                    .values(state="withdrawn")
                )
            support.in_thread(migrate.upgrade, empty_database)
            assert await migrate.current_revision(engine) == migrate.heads()[0]
        finally:
            await engine.dispose()

    async def test_the_models_and_the_migrations_agree(self, empty_database: str) -> None:
        support.in_thread(migrate.upgrade, empty_database)
        assert await drift(empty_database) == []

    async def test_every_table_carries_its_owners_prefix(self) -> None:
        owners = ("triage_", "consult_", "audit_")
        assert all(table.name.startswith(owners) for table in Base.metadata.sorted_tables)


async def _two_open_offers(connection: AsyncConnection, consultant_id: str) -> None:
    now = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
    await connection.execute(insert(table_of(ConsultConsultant)), {
        "id": consultant_id, "name": "Dr Doubled", "grade": "consultant",
        "specialties": ["frailty"], "status": "available", "status_changed_at": now,
        "last_assigned_at": None, "message_seq": 0, "created_at": now, "updated_at": now,
    })  # fmt: skip
    for number in (1, 2):
        await connection.execute(insert(table_of(ConsultCase)), {
            "id": f"case-{number}", "version": 1, "reference": f"R-{number}", "status": "offered",
            "priority": 3, "specialty": "frailty", "call_category": "C3", "news2_score": None,
            "snapshot": {}, "created_at": now, "received_at": now, "broadcast": False,
            "offer_round": 1, "escalate_at": None, "escalations": 0, "router_version": 0,
            "accepted_at": None,
        })  # fmt: skip
        await connection.execute(insert(table_of(ConsultOffer)), {
            "id": f"offer-{number}", "case_id": f"case-{number}", "consultant_id": consultant_id,
            "round": 1, "broadcast": False, "state": "open", "created_at": now,
            "expires_at": now + timedelta(minutes=2), "closed_at": None, "close_reason": None,
        })  # fmt: skip
