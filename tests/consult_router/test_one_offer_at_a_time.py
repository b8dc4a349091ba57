"""A consultant is asked about one case at a time: routing never makes a second open
offer to anyone, and the database refuses one whoever tries."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import String, bindparam, exists, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.consult_router import routing
from services.consult_router.repository import cases as case_repo
from services.consult_router.repository import messages as message_repo
from services.consult_router.repository import rota as rota_repo
from services.shared.clock import ManualClock
from services.shared.db.models import ConsultCase, ConsultConsultant, ConsultOffer
from services.shared.db.session import unit_of_work
from services.shared.resources import Resources
from tests.consult_router.conftest import Desk, case_state, snapshot
from tests.support import eventually, statements_sent


def open_offer(case_id: str, consultant_id: str, now: datetime) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()), "case_id": case_id, "consultant_id": consultant_id,
        "round": 1, "broadcast": False, "state": "open", "created_at": now,
        "expires_at": now + timedelta(minutes=2), "closed_at": None, "close_reason": None,
    }  # fmt: skip


async def offer_made(session: AsyncSession, case_id: str, now: datetime) -> ConsultOffer:
    """An open offer of the case to dr-a, which must be written."""
    made = await case_repo.insert_offer_unless_held(session, open_offer(case_id, "dr-a", now))
    assert made is not None
    return made


async def open_offers_held(resources: Resources, consultant_id: str) -> list[str]:
    async with unit_of_work(resources.sessionmaker) as session:
        rows = await session.execute(
            select(ConsultOffer.case_id).where(
                ConsultOffer.consultant_id == consultant_id, ConsultOffer.state == "open"
            )
        )
        return list(rows.scalars())


async def message_count(resources: Resources, consultant_id: str) -> int:
    async with unit_of_work(resources.sessionmaker) as session:
        count = await session.scalar(
            select(ConsultConsultant.message_seq).where(ConsultConsultant.id == consultant_id)
        )
        return int(count or 0)


async def two_cases_waiting(desk: Desk, clock: ManualClock) -> tuple[str, str]:
    """Two cases queued while dr-a, on call, was not free; then dr-a is free, and no
    routing pass has run since."""
    await desk.consultant("dr-a", ["frailty"], available=False)
    first, second = snapshot(clock, priority=2), snapshot(clock, priority=4)
    await desk.send_case(first, second)
    await desk.status("dr-a", "available")
    return first["id"], second["id"]


class TestTheDatabaseKeepsIt:
    async def test_a_second_open_offer_to_a_consultant_is_refused(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        first, second = await two_cases_waiting(desk, clock)
        now = clock.now()
        async with unit_of_work(resources.sessionmaker) as session:
            made = await offer_made(session, first, now)
            assert made.case_id == first
            again = await case_repo.insert_offer_unless_held(
                session, open_offer(second, "dr-a", now)
            )
            assert again is None
        assert await open_offers_held(resources, "dr-a") == [first]
        # Not the code's check alone: a plain insert of a second open offer fails.
        with pytest.raises(IntegrityError):
            async with unit_of_work(resources.sessionmaker) as session:
                await session.execute(insert(ConsultOffer), open_offer(second, "dr-a", now))
        assert await open_offers_held(resources, "dr-a") == [first]

    async def test_once_the_open_offer_closes_the_consultant_can_be_asked_again(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        first, second = await two_cases_waiting(desk, clock)
        now = clock.now()
        async with unit_of_work(resources.sessionmaker) as session:
            made = await offer_made(session, first, now)
            assert await case_repo.close_offer(
                session, made, state="declined", reason="in another call", at=now
            )
            assert await case_repo.insert_offer_unless_held(
                session, open_offer(second, "dr-a", now)
            )
        assert await open_offers_held(resources, "dr-a") == [second]


class TestRouting:
    async def test_an_offer_is_made_in_one_statement_on_the_offers(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        """The insert is the check: no read of the consultant's offers before it. On
        PostgreSQL the consultant's message about the offer is in the same statement."""
        await desk.consultant("dr-a", ["frailty"])

        def on_the_offers_or_messages(statement: str) -> bool:
            # Reads of offers' rows and writes to offers and messages (the offer's insert
            # feeding the message's is one `WITH`), not subqueries of other reads.
            return statement.startswith(
                ("SELECT consult_offer.", "INSERT INTO consult_offer", "WITH made AS")
            ) or ("INSERT INTO consult_message" in statement)

        case = snapshot(clock)
        with statements_sent(resources.engine, on_the_offers_or_messages) as sent:
            await desk.send_case(case)
        if resources.engine.dialect.name == "postgresql":
            [together] = sent
            assert "INSERT INTO consult_offer" in together
            assert "INSERT INTO consult_message" in together
            # The counter's bump sets the count alone, whatever the statement's parameters
            # are named (one named after a consultant's column would be set too).
            bumped = re.search(r"UPDATE consult_consultant SET (.*?) WHERE", together)
            assert bumped is not None
            assert bumped.group(1).startswith("message_seq=")
            assert "," not in bumped.group(1)
        else:
            assert [s.split()[:3] for s in sent] == [
                ["INSERT", "INTO", "consult_offer"], ["INSERT", "INTO", "consult_message"]
            ]  # fmt: skip
        assert await open_offers_held(resources, "dr-a") == [case["id"]]
        [(kind, told)] = await desk.log("dr-a")
        assert (kind, told["case"]["id"]) == ("offer", case["id"])

    @pytest.mark.parametrize("moving_the_case", [False, True], ids=["offer", "and move"])
    async def test_an_offer_not_made_tells_its_consultant_nothing_and_moves_no_case(
        self, desk: Desk, clock: ManualClock, resources: Resources, moving_the_case: bool
    ) -> None:
        """Refused because the consultant holds an open offer, the offer writes no message,
        leaves their message count as it was, and moves no case."""
        first, second = await two_cases_waiting(desk, clock)
        now = clock.now()
        async with unit_of_work(resources.sessionmaker) as session:
            await offer_made(session, first, now)
            made = await case_repo.insert_offer_and_message_unless_held(
                session, open_offer(second, "dr-a", now), kind="offer", payload={}, at=now,
                moving_the_case=moving_the_case,
            )  # fmt: skip
            assert made is None
        assert await open_offers_held(resources, "dr-a") == [first]
        assert await desk.log("dr-a") == []
        assert await message_count(resources, "dr-a") == 0
        assert await case_state(resources, second) == ("queued", 0)

    async def test_the_move_is_from_queued_alone_and_says_what_it_wrote(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        """On PostgreSQL the offer's statement moves a queued case and returns the router
        version it wrote; a case not queued it leaves as it is. (SQLite moves nothing: the
        caller's flush does.)"""
        first, second = await two_cases_waiting(desk, clock)
        await desk.consultant("dr-b", ["frailty"])
        async with unit_of_work(resources.sessionmaker) as session:
            await session.execute(
                update(ConsultCase).where(ConsultCase.id == second).values(status="offered")
            )
        now = clock.now()
        on_postgres = resources.engine.dialect.name == "postgresql"
        async with unit_of_work(resources.sessionmaker) as session:
            queued = await case_repo.insert_offer_and_message_unless_held(
                session, open_offer(first, "dr-a", now), kind="offer", payload={}, at=now,
                moving_the_case=True,
            )  # fmt: skip
            not_queued = await case_repo.insert_offer_and_message_unless_held(
                session, open_offer(second, "dr-b", now), kind="offer", payload={}, at=now,
                moving_the_case=True,
            )  # fmt: skip
        assert queued == case_repo.MadeOffer(seq=1, moved_to_version=1 if on_postgres else None)
        assert not_queued == case_repo.MadeOffer(seq=1, moved_to_version=None)
        assert await case_state(resources, first) == (
            ("offered", 1) if on_postgres else ("queued", 0)
        )
        assert await case_state(resources, second) == ("offered", 0)

    async def test_an_offer_made_and_its_message_are_numbered_in_the_log(
        self, desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        first, _ = await two_cases_waiting(desk, clock)
        now = clock.now()
        async with unit_of_work(resources.sessionmaker) as session:
            made = await case_repo.insert_offer_and_message_unless_held(
                session, open_offer(first, "dr-a", now), kind="offer",
                payload={"case": {"id": first}}, at=now,
            )  # fmt: skip
        assert made == case_repo.MadeOffer(seq=1)
        assert await open_offers_held(resources, "dr-a") == [first]
        assert await desk.log("dr-a") == [("offer", {"case": {"id": first}})]

    async def test_a_consultant_offered_a_case_after_the_pass_read_the_rota_gets_no_second(
        self, desk: Desk, router_app: FastAPI, clock: ManualClock, resources: Resources
    ) -> None:
        """Two passes read the rota with dr-a free; the other commits its offer first. The
        slower pass leaves its case waiting rather than ask dr-a about two at once."""
        if resources.engine.dialect.name == "sqlite":
            pytest.skip("SQLite has one writer: two passes never overlap")
        ctx = router_app.state.router
        first, second = await two_cases_waiting(desk, clock)
        now = clock.now()
        async with unit_of_work(resources.sessionmaker) as slower:
            view = await routing.RoutingView.load(slower, ctx, now=now)
            assert view.free_in("frailty") == {"dr-a"}
            async with unit_of_work(resources.sessionmaker) as faster:
                other_view = await routing.RoutingView.load(faster, ctx, now=now)
                await routing.route_case(faster, ctx, other_view, case_id=first, now=now)
            await routing.route_case(slower, ctx, view, case_id=second, now=now)
            assert "dr-a" in view.offered  # so the rest of the pass passes them over
        assert await open_offers_held(resources, "dr-a") == [first]
        assert [p["case"]["id"] for kind, p in await desk.log("dr-a") if kind == "offer"] == [first]
        async with unit_of_work(resources.sessionmaker) as session:
            waiting = await case_repo.get_case(session, second)
            assert waiting is not None
            assert waiting.status == "queued"

    async def test_the_best_held_by_another_pass_the_next_best_is_asked(
        self, desk: Desk, router_app: FastAPI, clock: ManualClock, resources: Resources
    ) -> None:
        """Another pass holds dr-a's row (asking them about something else) while dr-b,
        next best, is free: the case goes to dr-b at once, rather than waiting for a pass
        after the other commits."""
        if resources.engine.dialect.name == "sqlite":
            pytest.skip("SQLite has one writer: two passes never overlap")
        ctx = router_app.state.router
        await desk.consultant("dr-a", ["frailty"], available=False)
        await desk.consultant("dr-b", ["frailty"], available=False)
        case = snapshot(clock)
        await desk.send_case(case)
        await desk.status("dr-a", "available")
        await desk.status("dr-b", "available")
        now = clock.now()
        async with unit_of_work(resources.sessionmaker) as other_pass:
            assert await rota_repo.get_consultant(other_pass, "dr-a", for_update=True) is not None
            async with unit_of_work(resources.sessionmaker) as routing_it:
                view = await routing.RoutingView.load(routing_it, ctx, now=now)
                assert view.best_first(view.free_in("frailty")) == ["dr-a", "dr-b"]
                await routing.route_case(routing_it, ctx, view, case_id=case["id"], now=now)
        assert await open_offers_held(resources, "dr-a") == []
        assert await open_offers_held(resources, "dr-b") == [case["id"]]
        async with unit_of_work(resources.sessionmaker) as session:
            offered = await case_repo.get_case(session, case["id"])
            assert offered is not None
            assert offered.status == "offered"

    @pytest.mark.parametrize("with_message", [False, True], ids=["offer", "offer and message"])
    async def test_an_offer_being_closed_elsewhere_still_counts_and_is_not_waited_for(
        self, desk: Desk, clock: ManualClock, resources: Resources, with_message: bool
    ) -> None:
        """Another transaction is closing dr-a's open offer and has not committed. Routing,
        holding dr-a's row, neither waits for it (it goes on to lock dr-a for the
        message: waiting would be a deadlock) nor counts the offer closed: it writes
        nothing, as the read it replaced would have."""
        if resources.engine.dialect.name == "sqlite":
            pytest.skip("SQLite has one writer: two transactions never overlap")
        first, second = await two_cases_waiting(desk, clock)
        now = clock.now()
        async with unit_of_work(resources.sessionmaker) as opening:
            made = await offer_made(opening, first, now)
        async with unit_of_work(resources.sessionmaker) as closing:
            await closing.execute(
                update(ConsultOffer).where(ConsultOffer.id == made.id).values(state="withdrawn")
            )
            async with unit_of_work(resources.sessionmaker) as routing_it:
                values = open_offer(second, "dr-a", now)
                offering = (
                    case_repo.insert_offer_and_message_unless_held(
                        routing_it, values, kind="offer", payload={}, at=now
                    )
                    if with_message
                    else case_repo.insert_offer_unless_held(routing_it, values)
                )
                # Waiting for `closing` would never end: it commits after.
                again = await asyncio.wait_for(offering, timeout=10)
                assert again is None
        assert await open_offers_held(resources, "dr-a") == []
        assert await message_count(resources, "dr-a") == 0

    @pytest.mark.parametrize(
        ("meanwhile", "still_free"),
        [("a message counted", False), ("gone away", False), ("a change counting none", True)],
    )
    async def test_a_consultant_changed_after_the_offers_statement_began_is_not_locked(
        self, desk: Desk, clock: ManualClock, resources: Resources, meanwhile: str,
        still_free: bool,
    ) -> None:  # fmt: skip
        """The offer's statement reads the consultant's offers as of its start and takes
        their lock later. An offer committed in between (every offer counts a message on
        its consultant's row, on PostgreSQL in the statement that makes it) would be missed
        by that read and met in the index, where the insert waits for whoever is closing
        it: the lock refuses a row whose count, or status, changed since. Here the lock's
        check (`consultant_if_free`, which the offer's statement carries) is held up by an
        advisory lock once the statement has begun, while another transaction changes the
        consultant and commits."""
        if resources.engine.dialect.name == "sqlite":
            pytest.skip("SQLite has one writer: two transactions never overlap")
        await desk.consultant("dr-a", ["frailty"])
        gate = 8_2026
        held_up = select(
            exists(
                case_repo.consultant_if_free(bindparam("consultant_id", type_=String()))
                .where(func.pg_advisory_xact_lock_shared(gate).is_not(None))
            )
        )  # fmt: skip
        changes: dict[str, Callable[[AsyncSession], Awaitable[Any]]] = {
            "a message counted": lambda s: message_repo.append(
                s, "dr-a", type="withdrawn", payload={}, at=clock.now()
            ),
            "gone away": lambda s: s.execute(
                update(ConsultConsultant).where(ConsultConsultant.id == "dr-a")
                .values(status="away")
            ),
            "a change counting none": lambda s: s.execute(
                update(ConsultConsultant).where(ConsultConsultant.id == "dr-a")
                .values(updated_at=clock.now())
            ),
        }  # fmt: skip
        waiting_at_the_gate = text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        )

        async def offering() -> bool:
            async with unit_of_work(resources.sessionmaker) as session:
                found = await session.execute(held_up, {"consultant_id": "dr-a"})
                return bool(found.scalar_one())

        async def statement_held_up() -> bool:
            async with unit_of_work(resources.sessionmaker) as look:
                return bool((await look.execute(waiting_at_the_gate)).scalar_one())

        async with unit_of_work(resources.sessionmaker) as gatekeeper:
            await gatekeeper.execute(select(func.pg_advisory_xact_lock(gate)))
            checking = asyncio.create_task(offering())
            await eventually(statement_held_up)  # begun, its snapshot taken, not yet locked
            async with unit_of_work(resources.sessionmaker) as other:
                await changes[meanwhile](other)
        assert await asyncio.wait_for(checking, timeout=10) is still_free
