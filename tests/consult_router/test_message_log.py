"""Each consultant's numbered message log: every message gets the next number, once,
however many transactions write to the log at once."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.exc import NoResultFound

from services.consult_router.repository import messages as message_repo
from services.shared.clock import ManualClock
from services.shared.db.session import unit_of_work
from services.shared.resources import Resources
from tests.consult_router.conftest import Desk
from tests.support import statements_sent


async def test_messages_written_at_once_are_numbered_once_each(
    desk: Desk, resources: Resources, clock: ManualClock
) -> None:
    await desk.consultant("dr-a", ["frailty"], available=False)
    async with unit_of_work(resources.sessionmaker) as session:
        start = (await message_repo.newest_seqs(session, ["dr-a"]))["dr-a"]

    async def writer(number: int) -> list[int]:
        seqs = []
        for index in range(5):
            async with unit_of_work(resources.sessionmaker) as session:
                payload = {"writer": number, "index": index}
                seqs.append(
                    await message_repo.append(
                        session, "dr-a", type="case_updated", payload=payload, at=clock.now()
                    )
                )
        return seqs

    def on_the_log(sql: str) -> bool:
        return "consult_message" in sql or "UPDATE consult_consultant" in sql

    with statements_sent(resources.engine, on_the_log) as sent:
        written = await asyncio.gather(*(writer(number) for number in range(3)))
    seqs = sorted(seq for seqs in written for seq in seqs)
    assert seqs == list(range(start + 1, start + 16))
    async with unit_of_work(resources.sessionmaker) as session:
        logged = await message_repo.after(session, "dr-a", seq=start, limit=100)
    assert [message.seq for message in logged] == seqs
    assert sorted((m.payload["writer"], m.payload["index"]) for m in logged) == [
        (number, index) for number in range(3) for index in range(5)
    ]
    # PostgreSQL numbers and writes a message in one statement; SQLite takes two.
    per_message = 1 if resources.engine.dialect.name == "postgresql" else 2
    assert len(sent) == 15 * per_message


async def test_a_message_for_nobody_is_refused_and_writes_nothing(
    desk: Desk, resources: Resources, clock: ManualClock
) -> None:
    async def append_for_nobody() -> None:
        async with unit_of_work(resources.sessionmaker) as session:
            await message_repo.append(
                session, "dr-nobody", type="case_updated", payload={}, at=clock.now()
            )

    with pytest.raises(NoResultFound):
        await append_for_nobody()
    async with unit_of_work(resources.sessionmaker) as session:
        assert await message_repo.after(session, "dr-nobody", seq=0, limit=10) == []
