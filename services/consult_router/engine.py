"""The routing loop: every timer and every waiting case, claimed from the database.

One pass (`run_once`) expires offers past their deadline, lets go of presences whose
process died, raises escalations that are due, and offers waiting cases to consultants.
Each step runs in short transactions that claim their rows with `FOR UPDATE SKIP LOCKED`
on PostgreSQL, or, where a timer closes an offer or touches a consult, lock the case first
in a transaction of its own (the order every change to a case keeps; a replica sweeping
the same case at that moment waits its turn and finds it done). Any number of replicas
run the loop, none waits on another crosswise, and a replica that dies loses nothing.
The loop is woken at once by changes that make work, and polls every few seconds as the
safety net. Tests call `run_once` directly after moving the clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from services.consult_router import outbound, presence
from services.consult_router.context import WORK_CHANNEL, RouterContext
from services.consult_router.repository import cases as case_repo
from services.consult_router.repository import messages as message_repo
from services.consult_router.routing import RoutingView, open_cases_to_route, route_case
from services.shared.db.session import SessionMaker, after_commit, reads_alone, unit_of_work
from services.shared.observability import log_failure
from services.shared.schemas.events import EventType

logger = logging.getLogger("reach.router.engine")

BATCH = 200
PURGE_EVERY = timedelta(minutes=10)


class RoutingEngine:
    def __init__(self, *, ctx: RouterContext, sessionmaker: SessionMaker) -> None:
        self._ctx = ctx
        self._maker = sessionmaker
        self._last_purge: datetime | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        """Route until `stopping` is set.

        A wake-up means new work to route (a case, a decline, a consultant free): route
        it first and at once. The timers — deadlines, lapsed presences, escalations —
        are swept on every poll, and at least once a poll interval however busy the
        wake-ups keep the loop.
        """
        ctx = self._ctx
        poll = ctx.settings.router_poll_seconds
        swept_at = float("-inf")
        with ctx.notifier.subscribe(WORK_CHANNEL) as wake:
            woken = False
            while not stopping.is_set():
                sweep = not woken or time.monotonic() - swept_at >= poll
                try:
                    if sweep:
                        swept_at = time.monotonic()
                        await self.run_once()
                    else:
                        await self.route_changes()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the database is away: keep the loop alive
                    log_failure(logger, "routing pass failed", exc)
                woken = await wake.wait(poll, stopping=stopping)

    async def run_once(self) -> None:
        """One pass over every kind of due work."""
        now = self._ctx.clock.now()
        await self._expire_offers(now)
        async with unit_of_work(self._maker) as session:
            await presence.reap_stale(session, self._ctx, now=now)
        async with unit_of_work(self._maker) as session:
            await self._escalate_unaccepted(session, now)
            unadvised = await case_repo.due_advice(session, now=now, limit=BATCH)
            overdue = [(consult.id, consult.case_id) for consult in unadvised]
        for consult_id, case_id in overdue:
            async with unit_of_work(self._maker) as session:
                await self._escalate_unadvised(session, consult_id, case_id, now)
        await self._route(now, sweeping=True)
        await self._purge_if_due(now)

    async def route_changes(self) -> None:
        """The pass a wake-up runs: route what a change may have moved, no timers."""
        await self._route(self._ctx.clock.now(), sweeping=False)

    async def _expire_offers(self, now: datetime) -> None:
        """Close the offers past their deadline, a case at a time: each transaction locks
        the case, then its offers, then the consultant for their message — the order an
        accept or a cancellation keeps, so expiry never waits on one that waits on it."""
        async with unit_of_work(self._maker) as session:
            due = await case_repo.cases_with_expired_offers(session, now=now, limit=BATCH)
        for case_id in due:
            async with unit_of_work(self._maker) as session:
                await self._expire_offers_of(session, case_id, now)

    async def _expire_offers_of(self, session: AsyncSession, case_id: str, now: datetime) -> None:
        case = await case_repo.get_case(session, case_id, for_update=True)
        if case is None:
            return
        for offer in await case_repo.expired_offers_of_case(session, case_id, now=now):
            if not await case_repo.close_offer(
                session, offer, state="expired", reason="expired", at=now
            ):
                continue
            outbound.count_offer(session, self._ctx, "expired")
            await outbound.tell_consultant(
                session, self._ctx, offer.consultant_id, "offer_withdrawn",
                {"offer_id": offer.id, "reason": "expired"},
            )  # fmt: skip
            await outbound.announce_offer(session, self._ctx, offer, case, EventType.OFFER_EXPIRED)

    async def _escalate_unaccepted(self, session: AsyncSession, now: datetime) -> None:
        """Escalate the cases nobody has accepted in time (claimed with SKIP LOCKED)."""
        ctx = self._ctx
        every = timedelta(seconds=ctx.settings.escalate_after_seconds)
        for case in await case_repo.due_escalations(session, now=now, limit=BATCH):
            case.escalations += 1
            case.escalate_at = now + every
            waited = (now - case.created_at).total_seconds()
            await outbound.announce_status(
                session, ctx, case, EventType.CONSULT_ESCALATED,
                reason="not_accepted", waited_seconds=waited,
            )  # fmt: skip
            _count_escalation(session, ctx, "not_accepted")
            await outbound.queue_changed(session, ctx)

    async def _escalate_unadvised(
        self, session: AsyncSession, consult_id: str, case_id: str, now: datetime
    ) -> None:
        """Escalate a consult whose advice is overdue, in its own transaction: the case
        locked first, as advice and a cancellation lock it, then the consult read again."""
        ctx = self._ctx
        case = await case_repo.get_case(session, case_id, for_update=True)
        consult = await case_repo.get_consult(session, consult_id)
        if case is None or consult is None:
            return
        due = consult.advice_due_at
        finished = consult.advised_at is not None or consult.ended_at is not None
        if finished or due is None or due > now:
            return  # advised, cancelled or escalated meanwhile
        consult.advice_due_at = now + timedelta(seconds=ctx.settings.advice_overdue_seconds)
        waited = (now - consult.accepted_at).total_seconds()
        await outbound.announce_status(
            session, ctx, case, EventType.CONSULT_ESCALATED, consult=consult,
            reason="no_advice", waited_seconds=waited,
        )  # fmt: skip
        _count_escalation(session, ctx, "no_advice")

    async def _route(self, now: datetime, *, sweeping: bool) -> None:
        """Offer waiting cases, most urgent first, one short transaction per case that
        could move: on a wake-up, a case waiting on someone's answer is left alone, so a
        pass costs the cases that can change, not every open one. The first such case is
        routed in the transaction that read the view; on a quiet system it is the only
        one, and the offer's path is one transaction shorter. With no case open, or every
        one awaiting the answer of the one consultant it is offered to (a crew's
        cancellation woke the loop, say), the rota is not read at all.

        Every pass first looks at the queue on its own (`reads_alone`: on PostgreSQL in
        no transaction, so the pass that finds nothing to route, the usual one, costs one
        round trip, not three). The cases are read for ordering only: each is locked and
        read again before it is routed, and whatever frees a case or a consultant after
        the look wakes the loop for another pass."""
        async with reads_alone(self._maker) as reader:
            open_cases, on_offer = await open_cases_to_route(
                reader, now=now, ageing_step_seconds=self._ctx.settings.ageing_step_seconds
            )
        if not open_cases:
            return
        if not sweeping and all(
            RoutingView.awaits_an_answer(case, on_offer) for case in open_cases
        ):
            return
        async with unit_of_work(self._maker) as session:
            view = await RoutingView.load(session, self._ctx, now=now, on_offer=on_offer)
            waiting = iter(view.queue_order(open_cases))
            first = next((case for case in waiting if view.may_move(case, sweeping=sweeping)), None)
            if first is not None:
                await route_case(session, self._ctx, view, case_id=first.id, now=now)
        for case in waiting:
            if not view.may_move(case, sweeping=sweeping):
                continue
            async with unit_of_work(self._maker) as session:
                await route_case(session, self._ctx, view, case_id=case.id, now=now)

    async def _purge_if_due(self, now: datetime) -> None:
        if self._last_purge is not None and now - self._last_purge < PURGE_EVERY:
            return
        self._last_purge = now
        keep = timedelta(hours=self._ctx.settings.message_retention_hours)
        async with unit_of_work(self._maker) as session:
            await message_repo.purge_before(session, now - keep)


def _count_escalation(session: AsyncSession, ctx: RouterContext, reason: str) -> None:
    after_commit(session, lambda: ctx.metrics.escalations.labels(reason).inc())
