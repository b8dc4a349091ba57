"""The streams' safety net runs as one loop per process: it looks at the log every
interval while sockets watch, says which are behind, and stops when asked."""

from __future__ import annotations

import asyncio

from services.consult_router.repository import messages as message_repo
from services.shared.clock import ManualClock
from services.shared.db.session import unit_of_work
from services.shared.resources import Resources
from services.shared.seq_watch import SeqWatch
from tests.consult_router.conftest import Desk
from tests.support import eventually


async def test_the_loop_looks_until_stopped_and_wakes_only_the_sockets_behind(
    desk: Desk, resources: Resources, clock: ManualClock
) -> None:
    await desk.consultant("dr-a", ["frailty"], available=False)
    async with unit_of_work(resources.sessionmaker) as session:
        newest = await message_repo.append(
            session, "dr-a", type="case_updated", payload={}, at=clock.now()
        )
    watch = SeqWatch(message_repo.newest_seqs, what="the message log")
    stopping = asyncio.Event()
    told: list[str] = []
    with (
        watch.watch("dr-a", sent=lambda: newest - 1, look_again=lambda: told.append("behind")),
        watch.watch("dr-a", sent=lambda: newest, look_again=lambda: told.append("current")),
        watch.watch("dr-nobody", sent=lambda: 0, look_again=lambda: told.append("unknown")),
    ):
        loop = asyncio.create_task(watch.run(stopping, maker=resources.sessionmaker, interval=0.01))
        await eventually(lambda: len(told) >= 2, message="the loop should look again")
        stopping.set()
        await asyncio.wait_for(loop, timeout=10)
    assert set(told) == {"behind"}
