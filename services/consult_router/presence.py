"""Consultants' live connections, across processes.

Each socket is a row, refreshed while its process lives. When a consultant's last connection
closes — or the process holding it dies and its rows lapse — their open offers move on
at once and they are marked away, so nothing is offered to someone who is not looking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from services.consult_router import outbound
from services.consult_router.cases import withdraw_offer
from services.consult_router.context import RouterContext
from services.consult_router.repository import cases as case_repo
from services.consult_router.repository import rota as rota_repo
from services.shared.db.models import ConsultConnection
from services.shared.db.session import SessionMaker, unit_of_work
from services.shared.domain.vocabulary import ConsultantStatus
from services.shared.ids import new_id
from services.shared.observability import log_failure

logger = logging.getLogger("reach.router.presence")


async def connect(session: AsyncSession, ctx: RouterContext, consultant_id: str) -> str:
    now = ctx.clock.now()
    connection = ConsultConnection(
        id=new_id(),
        consultant_id=consultant_id,
        replica_id=ctx.replica_id,
        connected_at=now,
        last_seen_at=now,
    )
    await rota_repo.add_connection(session, connection)
    return connection.id


async def heartbeat(session: AsyncSession, ctx: RouterContext) -> None:
    """This process is alive: refresh every connection it holds, in one statement (one
    per process per interval, however many dashboards are connected)."""
    await rota_repo.touch_replica_connections(session, ctx.replica_id, at=ctx.clock.now())


async def keep_alive(stopping: asyncio.Event, *, ctx: RouterContext, maker: SessionMaker) -> None:
    """The process's presence heartbeat, until `stopping` is set."""
    while not stopping.is_set():
        await beat(ctx, maker)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), ctx.settings.presence_heartbeat_seconds)


async def beat(ctx: RouterContext, maker: SessionMaker) -> None:
    """One heartbeat: first the goodbyes that failed when their sockets closed, each in
    a transaction of its own, then this process's connections refreshed."""
    for connection_id in sorted(ctx.unsaid_goodbyes):
        try:
            async with unit_of_work(maker) as session:
                await disconnect(session, ctx, connection_id)
        except Exception as exc:  # the database is still away: the next beat tries again
            log_failure(logger, "a closed socket's presence is still not removed", exc)
            break
        ctx.unsaid_goodbyes.discard(connection_id)
    try:
        async with unit_of_work(maker) as session:
            await heartbeat(session, ctx)
    except Exception as exc:  # the database is away: the next beat tries again
        log_failure(logger, "presence heartbeat failed", exc)


async def disconnect(session: AsyncSession, ctx: RouterContext, connection_id: str) -> None:
    consultant_id = await rota_repo.remove_connection(session, connection_id)
    if consultant_id is not None:
        await _let_go_if_gone(session, ctx, {consultant_id}, now=ctx.clock.now())


async def reap_stale(session: AsyncSession, ctx: RouterContext, *, now: datetime) -> None:
    """Presences of processes that died: let them go, as if their sockets closed."""
    cutoff = now - timedelta(seconds=ctx.settings.presence_stale_seconds)
    gone = await rota_repo.remove_stale_connections(session, seen_before=cutoff)
    await _let_go_if_gone(session, ctx, gone, now=now)


async def _let_go_if_gone(
    session: AsyncSession, ctx: RouterContext, consultant_ids: set[str], *, now: datetime
) -> None:
    """Of consultants whose connections closed, those with none left: their offers move
    on and an available one is marked away. The cases they are offered are locked before
    any of them (see `case_repo.lock_cases_offered_to`), the consultants in id order."""
    seen_since = now - timedelta(seconds=ctx.settings.presence_stale_seconds)
    gone = [
        consultant_id
        for consultant_id in sorted(consultant_ids)
        # another device still connected keeps them
        if not await rota_repo.connection_count(session, consultant_id, seen_since=seen_since)
    ]
    if not gone:
        return
    await case_repo.lock_cases_offered_to(session, gone)
    # All at once, straight after their cases: the moment in which a routing pass could
    # offer one of them a new case (see `release_offers`) is as short as it can be.
    locked = await rota_repo.lock_consultants(session, gone)
    for consultant_id in gone:
        consultant = locked.get(consultant_id)
        if consultant is None:
            continue
        await release_offers(session, ctx, consultant_id, reason="reassigned")
        if consultant.status == ConsultantStatus.AVAILABLE:
            consultant.status = ConsultantStatus.AWAY
            consultant.status_changed_at = now
    await outbound.wake_routing(session, ctx)


async def release_offers(
    session: AsyncSession, ctx: RouterContext, consultant_id: str, *, reason: str
) -> None:
    """Withdraw every open offer the consultant holds, so each case moves on now.

    The caller locks the cases first (`case_repo.lock_cases_offered_to`), then the
    consultant: locking each case again here waits for nothing. Only an offer made in
    the moment between the two (a routing pass offering them a case just then) finds its
    case unlocked and waits for it, the one place the order is the other way round; if
    that meets a transaction waiting on the consultant, the database ends one and it is
    tried again."""
    for offer in await case_repo.open_offers_for_consultant(session, consultant_id):
        case = await case_repo.get_case(session, offer.case_id, for_update=True)
        if case is not None:
            await withdraw_offer(session, ctx, offer=offer, case=case, reason=reason)
