"""After-commit callbacks run once the real transaction commits: not when a savepoint is
released, and never for work a rolled-back savepoint took with it."""

from __future__ import annotations

import pytest

from services.shared.db.engine import create_engine
from services.shared.db.session import after_commit, create_sessionmaker, unit_of_work


class Refused(Exception):
    pass


async def test_callbacks_wait_for_the_commit_and_die_with_their_savepoint(
    database_url: str,
) -> None:
    engine = create_engine(database_url)
    maker = create_sessionmaker(engine)
    ran: list[str] = []
    try:
        async with unit_of_work(maker) as session:
            after_commit(session, lambda: ran.append("before the savepoints"))
            async with session.begin_nested():
                after_commit(session, lambda: ran.append("released savepoint"))
            assert ran == []  # released is not committed

            async def refused_in_a_savepoint() -> None:
                async with session.begin_nested():
                    after_commit(session, lambda: ran.append("rolled-back savepoint"))
                    raise Refused

            with pytest.raises(Refused):
                await refused_in_a_savepoint()
            async with session.begin_nested():
                after_commit(session, lambda: ran.append("after the rollback"))
            assert ran == []
        assert ran == ["before the savepoints", "released savepoint", "after the rollback"]

        ran.clear()

        async def refused_after_a_savepoint() -> None:
            async with unit_of_work(maker) as session:
                async with session.begin_nested():
                    after_commit(session, lambda: ran.append("never"))
                raise Refused

        with pytest.raises(Refused):
            await refused_after_a_savepoint()
        async with unit_of_work(maker) as session:
            after_commit(session, lambda: ran.append("the next transaction"))
        assert ran == ["the next transaction"]
    finally:
        await engine.dispose()
