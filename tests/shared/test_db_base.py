"""`read_only_row`: a row just written, as an object to read, without change tracking;
`adopt_written_row`: one the session then tracks as if it had read it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import insert, inspect, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.shared.db.base import adopt_written_row, read_only_row, table_of
from services.shared.db.engine import create_engine
from services.shared.db.models import AuditChainHead, TriageCaseEvent
from services.shared.db.session import SessionMaker, create_sessionmaker, unit_of_work
from services.triage_api.views import event_read

VALUES = {
    "case_id": "case-1",
    "seq": 3,
    "type": "offered",
    "at": datetime(2026, 12, 1, 9, 30, tzinfo=UTC),
    "data": {"status": "offered"},
}


def test_it_reads_as_the_stored_row_does() -> None:
    row = read_only_row(TriageCaseEvent, VALUES)
    assert isinstance(row, TriageCaseEvent)
    assert (row.case_id, row.seq, row.type, row.at, row.data) == tuple(VALUES.values())
    assert event_read(row).seq == 3


def test_it_has_no_changes_to_flush_where_a_new_object_has_every_column() -> None:
    built, read_only = TriageCaseEvent(**VALUES), read_only_row(TriageCaseEvent, VALUES)
    assert inspect(built).attrs.seq.history.has_changes()
    state = inspect(read_only)
    assert state.transient
    assert not any(state.attrs[name].history.has_changes() for name in VALUES)


HEAD = {"id": 7, "seq": 3, "hash": "a" * 64}


class TestAdoptWrittenRow:
    """`adopt_written_row`: a row written as Core, the session's own object from then on."""

    @pytest.fixture
    async def maker(self, database_url: str) -> AsyncIterator[SessionMaker]:
        engine = create_engine(database_url)
        try:
            yield create_sessionmaker(engine)
        finally:
            await engine.dispose()

    async def write(self, session: AsyncSession, values: dict[str, Any]) -> AuditChainHead:
        await session.execute(insert(table_of(AuditChainHead)), values)
        return adopt_written_row(session, AuditChainHead, values)

    async def stored_seq(self, maker: SessionMaker) -> int | None:
        async with unit_of_work(maker) as session:
            stored = select(AuditChainHead.seq).where(AuditChainHead.id == HEAD["id"])
            return (await session.execute(stored)).scalar_one_or_none()

    async def test_reads_find_it_and_its_changes_are_written(self, maker: SessionMaker) -> None:
        async with unit_of_work(maker) as session:
            adopted = await self.write(session, dict(HEAD))
            assert not session.new  # nothing to insert again
            assert not session.dirty
            assert await session.get(AuditChainHead, HEAD["id"]) is adopted
            adopted.seq = 4
        assert await self.stored_seq(maker) == 4

    async def test_written_again_after_its_savepoint_was_undone(self, maker: SessionMaker) -> None:
        undone: list[AuditChainHead] = []  # still referenced, as a caller may keep it
        async with unit_of_work(maker) as session:
            with contextlib.suppress(RuntimeError):
                async with session.begin_nested():
                    undone.append(await self.write(session, dict(HEAD)))
                    raise RuntimeError("the batch was refused")
            adopted = await self.write(session, {**HEAD, "seq": 5})
            assert await session.get(AuditChainHead, HEAD["id"]) is adopted
            adopted.seq = 6
        assert await self.stored_seq(maker) == 6
