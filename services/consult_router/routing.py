"""Choosing who gets a case.

Eligible: on shift now for the case's specialty, status available, under the consult
limit, and not already being offered something. Sequential first: the best eligible
consultant who has not been tried this round (fewest active consults, then longest idle)
gets the offer, with a deadline; if another routing pass holds them at that moment, the
next best does, so a case never waits while someone else is free. When nobody untried is
free in the specialty — everyone was tried, or nobody is on call — the case is offered to
everyone free in the specialty and in the fallback specialty at once, and the first
accept wins.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from services.consult_router import outbound
from services.consult_router.cases import withdraw_offer
from services.consult_router.context import RouterContext
from services.consult_router.recent_messages import LoggedMessage
from services.consult_router.repository import cases as case_repo
from services.consult_router.repository import rota as rota_repo
from services.consult_router.repository.rota import OnCallToRoute
from services.consult_router.views import offer_read
from services.shared.db.base import read_only_row
from services.shared.db.models import ConsultCase, ConsultOffer
from services.shared.db.session import RetryWithSavepoints, after_commit, undoable
from services.shared.domain.priority import aged_priority, ageing_bounds
from services.shared.domain.vocabulary import FALLBACK_SPECIALTY, ConsultantStatus, Specialty
from services.shared.ids import new_id
from services.shared.observability import log_failure
from services.shared.schemas.events import EventType

logger = logging.getLogger("reach.router")

_NEVER = datetime.min.replace(tzinfo=UTC)
# The open cases a routing pass orders: in each specialty, the most urgent this many (far
# beyond any real queue; in a backlog beyond it, the least urgent wait for a later pass).
QUEUE_WINDOW = 200


async def open_cases_to_route(
    session: AsyncSession, *, now: datetime, ageing_step_seconds: float
) -> tuple[list[ConsultCase], set[str]]:
    """The open cases a routing pass orders, the most urgent at `now` in each specialty
    (read for ordering only: their clinical snapshot is not loaded), and which of them
    someone is being asked about."""
    queue = await case_repo.queue_to_route(
        session,
        limit=QUEUE_WINDOW,
        aged_by=ageing_bounds(now, ageing_step_seconds=ageing_step_seconds),
    )
    return [case for case, _ in queue], {case.id for case, on_offer in queue if on_offer}


@dataclass
class RoutingView:
    """Who is on call and free, read once per routing pass and kept current as the
    pass makes offers. Offers re-check under row locks, so a stale view costs a skip,
    never a double offer."""

    # As read for the pass (not the session's objects): an offer locks and reads afresh.
    consultants: dict[str, OnCallToRoute]
    on_call: dict[str, set[str]]
    active: dict[str, int]
    # Consultants on call being asked about a case; the cases someone is being asked
    # about, as read with the queue (`open_queue`, or the caller's own read).
    offered: set[str]
    on_offer: set[str]
    consult_limit: int
    ageing_step_seconds: float
    now: datetime
    made: list[str] = field(default_factory=list)
    # The cases moved to offered by the statement that made their first offer.
    moved: set[str] = field(default_factory=set)
    # Whether an open case besides the pass's new ones could move (read with who is on
    # call when the pass routes new cases; assumed so otherwise).
    others_may_move: bool = True

    @classmethod
    async def load(
        cls,
        session: AsyncSession,
        ctx: RouterContext,
        *,
        now: datetime,
        on_offer: set[str] | None = None,
        arrivals: Collection[str] | None = None,
    ) -> RoutingView:
        """One statement: who is on call, with their consults and open offers.
        `on_offer`: the cases with an open offer, if the caller has read the queue.
        `arrivals`: the cases the transaction has just written, if it routes them; the
        statement then also says whether any other open case could move."""
        on_call: dict[str, set[str]] = {}
        consultants: dict[str, OnCallToRoute] = {}
        specialties = [str(s) for s in Specialty]
        others_may_move = True
        if arrivals is None:
            entries = await rota_repo.on_call_to_route_at(session, specialties=specialties, at=now)
        else:
            entries, others_may_move = await rota_repo.on_call_to_route_beside(
                session, specialties=specialties, at=now, arrivals=arrivals
            )
        for entry in entries:
            on_call.setdefault(entry.specialty, set()).add(entry.consultant_id)
            consultants[entry.consultant_id] = entry
        return cls(
            consultants=consultants,
            on_call=on_call,
            active={c.consultant_id: c.active_consults for c in consultants.values()},
            offered={c.consultant_id for c in consultants.values() if c.holds_offer},
            on_offer=set() if on_offer is None else on_offer,
            consult_limit=ctx.settings.consult_limit,
            ageing_step_seconds=ctx.settings.ageing_step_seconds,
            now=now,
            others_may_move=others_may_move,
        )

    def is_free(self, consultant_id: str) -> bool:
        consultant = self.consultants.get(consultant_id)
        return (
            consultant is not None
            and consultant.status == ConsultantStatus.AVAILABLE
            and self.active.get(consultant_id, 0) < self.consult_limit
            and consultant_id not in self.offered
        )

    def free_in(self, specialty: str) -> set[str]:
        return {c for c in self.on_call.get(specialty, set()) if self.is_free(c)}

    def anyone_free(self) -> bool:
        return any(self.is_free(c) for c in self.consultants)

    def on_shift_for(self, consultant_id: str, specialties: set[str]) -> bool:
        return any(consultant_id in self.on_call.get(s, set()) for s in specialties)

    def best_first(self, candidates: set[str]) -> list[str]:
        """Fewest active consults, then longest idle, then a stable order."""
        return sorted(
            candidates,
            key=lambda c: (
                self.active.get(c, 0),
                self.consultants[c].last_assigned_at or _NEVER,
                c,
            ),
        )

    async def open_queue(self, session: AsyncSession) -> list[ConsultCase]:
        """The open cases, most urgent first; which are on offer is read with them."""
        cases, self.on_offer = await open_cases_to_route(
            session, now=self.now, ageing_step_seconds=self.ageing_step_seconds
        )
        return self.queue_order(cases)

    async def queue_with(
        self, session: AsyncSession, arrivals: Mapping[str, ConsultCase]
    ) -> list[ConsultCase]:
        """The open cases a pass routing `arrivals` goes through, most urgent first: the
        queue as read, or, when no other case could move (`others_may_move`), the open
        arrivals alone: the pass would skip every other case anyway, and no arrival is on
        offer (it is new). Arrivals their own batch ended are left out, as the queue's read
        leaves them out."""
        if self.others_may_move:
            return await self.open_queue(session)
        return self.queue_order([c for c in arrivals.values() if c.status in case_repo.OPEN_CASE])

    def queue_order(self, cases: list[ConsultCase]) -> list[ConsultCase]:
        """Most urgent first: priority raised by waiting, then NEWS2, then the oldest."""

        def urgency(case: ConsultCase) -> tuple[int, int, datetime, str]:
            waited = (self.now - case.created_at).total_seconds()
            level = aged_priority(
                case.priority, waited_seconds=waited, ageing_step_seconds=self.ageing_step_seconds
            )
            return (level, -(case.news2_score or 0), case.created_at, case.id)

        return sorted(cases, key=urgency)

    @staticmethod
    def awaits_an_answer(case: ConsultCase, on_offer: set[str]) -> bool:
        """Offered to one consultant, whose answer or deadline alone moves it on: until
        then only a sweep looks at it, whoever else is free."""
        return case.status != "queued" and case.id in on_offer and not case.broadcast

    def may_move(self, case: ConsultCase, *, sweeping: bool) -> bool:
        """Whether routing the case now could change anything, so a pass skips the rest.

        A waiting case moves only if someone is free. A case someone is being asked about
        waits for their answer or their deadline, unless it is broadcast (anyone newly
        free joins in). Its offer closed (declined, withdrawn), it moves on. A sweep looks
        at every case: an offer held by someone whose shift has ended is found there.
        `case_repo.ANOTHER_CASE_MAY_MOVE` is the same rule in SQL: change both together.
        """
        if case.status == "queued":
            return self.anyone_free()
        if sweeping or case.id not in self.on_offer:
            return True
        return case.broadcast and self.anyone_free()  # False if `awaits_an_answer`

    def take(self, consultant_id: str) -> None:
        self.offered.add(consultant_id)
        self.made.append(consultant_id)


async def route_arrivals(
    session: AsyncSession, ctx: RouterContext, arrivals: Mapping[str, ConsultCase]
) -> None:
    """Offer new cases in the transaction that records them, rather than waking the
    routing loop to do it in transactions of its own afterwards.

    It is the pass a wake-up runs, over the whole queue in order of urgency, so a new case
    never goes ahead of one waiting longer or more urgently; the queue is read only when
    the statement that reads who is on call says a case besides the new ones could move
    (each round trip here is time the crew waits through). That statement is Core, which
    flushes nothing: what the batch changed is flushed before routing (`apply_snapshots`).
    Under a savepoint: if it fails, the cases stay recorded and the routing loop is woken
    to route them.
    `arrivals` are the cases this transaction wrote, as this session holds them.
    """
    now = ctx.clock.now()
    try:
        async with undoable(session):
            view = await RoutingView.load(session, ctx, now=now, arrivals=arrivals.keys())
            if not view.anyone_free():
                return  # no new case can move: the queue is not read (it can be long then)
            for case in await view.queue_with(session, arrivals):
                if view.may_move(case, sweeping=False):
                    await route_case(
                        session, ctx, view, case_id=case.id, now=now, arrival=arrivals.get(case.id)
                    )
    except RetryWithSavepoints:
        raise  # run again with the savepoint, which keeps the cases if routing fails again
    except Exception as exc:  # the loop routes them instead
        log_failure(logger, "routing new cases on arrival failed; left to the routing loop", exc)
        await outbound.wake_routing(session, ctx)


async def route_case(
    session: AsyncSession,
    ctx: RouterContext,
    view: RoutingView,
    *,
    case_id: str,
    now: datetime,
    arrival: ConsultCase | None = None,
) -> None:
    """Route one case. `arrival`: the case as this transaction wrote it, uncommitted, so
    no other transaction can see it, let alone hold it or have offered it: it is routed
    as it stands, without the locking read and with no offers to look up."""
    offers: list[ConsultOffer] = []
    if arrival is not None:
        if arrival.status not in case_repo.OPEN_CASE:
            return  # its own batch ended it
        case = arrival
    else:
        locked = await case_repo.lock_open_case(session, case_id)
        if locked is None:
            return  # taken, ended, or another process is routing it
        case = locked
        offers = await case_repo.offers_open_or_in_round(session, case.id, case.offer_round)
    open_offers = await _drop_holders_off_shift(
        session, ctx, view, case, [o for o in offers if o.state == "open"]
    )
    # Read before any withdrawal above, these are the same objects: their states are
    # current (closing an offer updates this session's copy).
    in_round = [o for o in offers if o.round == case.offer_round]
    made = 0
    if not case.broadcast:
        if open_offers:
            return  # someone is being asked; their deadline or answer moves it on
        untried = view.free_in(case.specialty) - {o.consultant_id for o in in_round}
        if untried:
            # The best who can be asked now: one whose row another pass holds (asking
            # them something else) is passed over for the next, not waited for.
            ranked = view.best_first(untried)
            made = await _offer_each(session, ctx, view, case, ranked, now=now, enough=1)
        else:
            case.broadcast = True
    if case.broadcast:
        made = await _broadcast(session, ctx, view, case, open_offers, in_round, now=now)
    await _settle_status(
        session, ctx, view, case, still_open=bool(open_offers) or made > 0, made=made
    )


def _specialties_for(case: ConsultCase) -> set[str]:
    return {case.specialty, str(FALLBACK_SPECIALTY)} if case.broadcast else {case.specialty}


async def _drop_holders_off_shift(
    session: AsyncSession,
    ctx: RouterContext,
    view: RoutingView,
    case: ConsultCase,
    open_offers: list[ConsultOffer],
) -> list[ConsultOffer]:
    """Withdraw offers held by consultants whose shift has ended (a handover): the case
    moves on at once rather than waiting out the deadline. The offers still open."""
    still_open = []
    for offer in open_offers:
        if view.on_shift_for(offer.consultant_id, _specialties_for(case)):
            still_open.append(offer)
        else:
            await withdraw_offer(session, ctx, offer=offer, case=case, reason="reassigned")
            view.offered.discard(offer.consultant_id)
    return still_open


async def _broadcast(
    session: AsyncSession,
    ctx: RouterContext,
    view: RoutingView,
    case: ConsultCase,
    open_offers: list[ConsultOffer],
    in_round: list[ConsultOffer],
    *,
    now: datetime,
) -> int:
    """Everyone free in the specialty and the fallback, except those holding an offer for
    it already, and those who declined it moments ago (no ping-pong of declines; one who
    merely let an offer lapse is asked again)."""
    holders = {o.consultant_id for o in open_offers}
    cooling_since = now - timedelta(seconds=ctx.settings.offer_timeout_seconds)
    recent = {
        o.consultant_id
        for o in in_round
        if o.state == "declined" and o.closed_at is not None and o.closed_at > cooling_since
    }
    candidates = (
        (view.free_in(case.specialty) | view.free_in(str(FALLBACK_SPECIALTY))) - holders - recent
    )
    return await _offer_each(session, ctx, view, case, sorted(candidates), now=now)


async def _offer_each(
    session: AsyncSession,
    ctx: RouterContext,
    view: RoutingView,
    case: ConsultCase,
    consultant_ids: list[str],
    *,
    now: datetime,
    enough: int | None = None,
) -> int:
    """Offer the case to each consultant in turn who is still free as the offer's
    statement locks them, until `enough` offers are made (all, if None); the offers
    made."""
    made = 0
    deadline = now + timedelta(seconds=ctx.settings.offer_timeout_seconds)
    for consultant_id in consultant_ids:
        if made == enough:
            break
        values: dict[str, object] = {
            "id": new_id(),
            "case_id": case.id,
            "consultant_id": consultant_id,
            "round": case.offer_round,
            "broadcast": case.broadcast,
            "state": "open",
            "created_at": now,
            "expires_at": deadline,
            "closed_at": None,
            "close_reason": None,
        }
        offer = read_only_row(ConsultOffer, values)
        offer_message = offer_read(offer, case).model_dump(mode="json")
        # One statement locks the consultant if they are still free and makes the offer
        # unless they hold one; on PostgreSQL the consultant's message about it goes with
        # it, and the case's move to offered with its first offer: no UPDATE of its own.
        offered = await case_repo.insert_offer_and_message_unless_held(
            session, values, kind="offer", payload=offer_message, at=ctx.clock.now(),
            moving_the_case=case.status == "queued",
        )  # fmt: skip
        if offered is None:
            # Gone away, their row held or changed by another transaction, or offered
            # something meanwhile: not free for the rest of this pass; a later pass (a
            # wake-up, or the poll at the latest) asks them again.
            view.offered.add(consultant_id)
            continue
        if offered.moved_to_version is not None:  # the session's object takes it as written
            set_committed_value(case, "status", "offered")
            set_committed_value(case, "router_version", offered.moved_to_version)
            view.moved.add(case.id)
        view.take(consultant_id)
        made += 1
        outbound.count_offer(session, ctx, "made")
        await outbound.told_consultant(
            session, ctx, consultant_id, LoggedMessage(offered.seq, "offer", offer_message)
        )
        await outbound.announce_offer(session, ctx, offer, case, EventType.OFFER_MADE)
        _log_offer(session, offer.id, case.id, consultant_id)
    return made


def _log_offer(session: AsyncSession, offer_id: str, case_id: str, consultant_id: str) -> None:
    after_commit(
        session,
        lambda: logger.info("offer %s: case %s to %s", offer_id, case_id, consultant_id),
    )


async def _settle_status(
    session: AsyncSession,
    ctx: RouterContext,
    view: RoutingView,
    case: ConsultCase,
    *,
    still_open: bool,
    made: int,
) -> None:
    """The crew sees `offered` while someone is being asked and `queued` while nobody
    is free; only changes are announced."""
    if made and case.id in view.moved:  # moved with its first offer (PostgreSQL)
        await outbound.announce_status(session, ctx, case, EventType.CONSULT_OFFERED, counted=True)
        await outbound.queue_changed(session, ctx)
    elif made and case.status == "queued":
        case.status = "offered"
        await outbound.announce_status(session, ctx, case, EventType.CONSULT_OFFERED)
        await outbound.queue_changed(session, ctx)
    elif not still_open and case.status == "offered":
        case.status = "queued"
        await outbound.announce_status(session, ctx, case, EventType.CONSULT_QUEUED)
        await outbound.queue_changed(session, ctx)
