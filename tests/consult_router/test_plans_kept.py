"""On PostgreSQL a routing pass's read of who is on call is planned for its first five
runs and then runs on a plan the database keeps: it compares with the words the partial
indexes of open offers and open cases name, written into the SQL, so the kept plan uses
those indexes and costs no more than a fresh one. (Compared with parameters, the kept
plan could not use the indexes, and every run was planned afresh.)"""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.consult_router.repository import rota as rota_repo
from services.shared.clock import ManualClock
from services.shared.db.session import unit_of_work
from services.shared.resources import Resources
from tests.consult_router.conftest import Desk, snapshot
from tests.support import statements_sent

RUNS = 8
FIRST_PLANNED = 5  # PostgreSQL plans a prepared statement afresh for its first five runs


async def plans_of(session: AsyncSession, statement: str) -> tuple[int, int]:
    """How often this session's connection has run `statement` on a kept (generic) plan,
    and how often on a plan made for the run (custom)."""
    rows = await session.execute(
        text(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE statement = :statement"
        ),
        {"statement": statement},
    )
    [(kept, fresh)] = rows.all()
    return int(kept), int(fresh)


@pytest.fixture(autouse=True)
def _postgres_only(resources: Resources) -> None:
    if resources.engine.dialect.name == "sqlite":
        pytest.skip("SQLite keeps no plans between runs to compare")


async def test_who_is_on_call_is_planned_five_times_then_kept(
    desk: Desk, clock: ManualClock, resources: Resources
) -> None:
    await desk.consultant("dr-a", ["frailty"])
    await desk.send_case(snapshot(clock))
    with statements_sent(resources.engine, lambda sql: "consult_shift" in sql) as sent:
        async with unit_of_work(resources.sessionmaker) as session:
            for _ in range(RUNS):
                on_call, _others_may_move = await rota_repo.on_call_to_route_beside(
                    session, specialties=["frailty", "cardiology"], at=clock.now(), arrivals=["new"]
                )
                assert [entry.consultant_id for entry in on_call] == ["dr-a"]
            assert len(set(sent)) == 1
            kept, fresh = await plans_of(session, sent[0])
    # Earlier runs of the same statement on this connection (none is expected) would only
    # move runs from planned to kept.
    assert fresh <= FIRST_PLANNED
    assert kept >= RUNS - FIRST_PLANNED
