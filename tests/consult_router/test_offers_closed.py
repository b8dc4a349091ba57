"""A case's open offers closed in one statement (a cancellation, an accept): what it
returns, and what the session already held, brought up to date."""

from __future__ import annotations

from typing import Any

from services.consult_router.repository import cases as case_repo
from services.shared.clock import ManualClock
from services.shared.db.models import ConsultOffer
from services.shared.db.session import unit_of_work
from services.shared.resources import Resources
from tests.consult_router.conftest import Desk, snapshot


async def offered_to_dr_a(desk: Desk, clock: ManualClock) -> dict[str, Any]:
    """A case routed to dr-a, who holds its one open offer."""
    await desk.consultant("dr-a", ["frailty"])
    case = snapshot(clock)
    await desk.send_case(case)
    return case


async def test_an_offer_the_session_holds_is_returned_closed_and_whole(
    desk: Desk, clock: ManualClock, resources: Resources
) -> None:
    case = await offered_to_dr_a(desk, clock)
    async with unit_of_work(resources.sessionmaker) as session:
        [held] = await case_repo.open_offers_for_case(session, case["id"])
        session.expire(held)  # as an undone savepoint leaves it
        closed = await case_repo.close_open_offers_of_case(
            session, case["id"], state="withdrawn", reason="cancelled", at=clock.now()
        )
        assert len(closed) == 1
        assert closed[0] is held
        # Read without a lazy load, which an async session cannot do.
        assert (held.state, held.close_reason, held.consultant_id) == (
            "withdrawn", "cancelled", "dr-a",
        )  # fmt: skip
        assert held.closed_at == clock.now()


async def test_offers_it_does_not_hold_come_back_closed_and_a_second_close_finds_none(
    desk: Desk, clock: ManualClock, resources: Resources
) -> None:
    case = await offered_to_dr_a(desk, clock)
    async with unit_of_work(resources.sessionmaker) as session:
        [closed] = await case_repo.close_open_offers_of_case(
            session, case["id"], state="withdrawn", reason="cancelled", at=clock.now()
        )
        assert isinstance(closed, ConsultOffer)
        assert (closed.case_id, closed.consultant_id, closed.state) == (
            case["id"], "dr-a", "withdrawn",
        )  # fmt: skip
        assert closed.created_at.tzinfo is not None
        again = await case_repo.close_open_offers_of_case(
            session, case["id"], state="withdrawn", reason="cancelled", at=clock.now()
        )
        assert again == []
