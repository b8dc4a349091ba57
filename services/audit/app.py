"""The audit app factory: the internal endpoint events arrive on, the trail, the
reports, the metrics, and a periodic full verification of the chain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from services.audit import SERVICE_NAME, api, dispositions, metrics, trail, verification
from services.audit.context import AuditContext
from services.audit.redaction import ALLOWED
from services.audit.settings import AuditSettings
from services.shared.clients.peers import EVENTS_PATH, Peer
from services.shared.clock import Clock
from services.shared.db.models import AuditInbox
from services.shared.db.session import SessionMaker, unit_of_work
from services.shared.observability import log_failure
from services.shared.outbox import BatchHandler, EventHandler, install_inbox
from services.shared.resources import Resources, open_resources
from services.shared.schemas.events import Event
from services.shared.web import NO_NATIVE_TELEMETRY, background_tasks, install_common

logger = logging.getLogger("reach.audit")


def event_handlers(clock: Clock) -> dict[str, EventHandler]:
    """Every event type the services send: recorded in the trail; outcomes also feed the
    disposition records. The inbox has already made sure each is handled once."""

    async def handle(session: AsyncSession, event: Event) -> None:
        now = clock.now()
        await trail.append(session, trail.NewEntry.of(event), recorded_at=now)
        await dispositions.record(session, event, now=now)

    return dict.fromkeys(ALLOWED, handle)


def batch_handler(clock: Clock) -> BatchHandler:
    """The same as `event_handlers`, for a batch: one append to the trail for all."""

    async def handle(session: AsyncSession, events: list[Event]) -> None:
        now = clock.now()
        await trail.append_many(session, [trail.NewEntry.of(e) for e in events], recorded_at=now)
        await dispositions.record_many(session, events, now=now)

    return handle


async def verify_periodically(
    stopping: asyncio.Event, *, ctx: AuditContext, maker: SessionMaker
) -> None:
    """A full verification now and then, so an edit to an old entry is found even if
    nobody asks; the result is the `reach_audit_chain_ok` metric."""
    while not stopping.is_set():
        try:
            verdict = await verification.verify(maker, now=ctx.clock.now(), full=True)
            ctx.record_verdict(verdict, at=ctx.clock.now())
            if not verdict.ok:
                logger.error("audit trail failed verification at entry %s", verdict.first_bad_seq)
        except Exception as exc:  # the database is away: try again next time
            log_failure(logger, "audit verification failed to run", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), ctx.settings.audit_full_verify_seconds)


def create_app(
    settings: AuditSettings | None = None, *, resources: Resources | None = None
) -> FastAPI:
    """Build audit. With `resources` (the embedded app, tests) it uses them and leaves
    closing them to their owner; without, it builds its own from `settings`."""
    settings = settings or AuditSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            res = resources
            if res is None:
                res = await stack.enter_async_context(open_resources(settings))
            app.state.resources = res
            ctx = AuditContext(
                settings=settings, clock=res.clock, collector=metrics.register(res.registry)
            )
            app.state.audit = ctx
            app.state.event_handlers = event_handlers(res.clock)
            app.state.event_batch_handler = batch_handler(res.clock)
            app.state.refresh_metrics = partial(_refresh_metrics, res, ctx)
            try:
                tasks = await stack.enter_async_context(background_tasks())
                if settings.background_tasks:
                    tasks.start(
                        f"{SERVICE_NAME}-verify",
                        partial(verify_periodically, ctx=ctx, maker=res.sessionmaker),
                    )
                yield
            finally:
                res.registry.unregister(ctx.collector)

    app = FastAPI(
        title="reach audit",
        summary="The tamper-evident trail, dispositions and redirection reports.",
        version="0.1.0",
        lifespan=lifespan,
        telemetry=NO_NATIVE_TELEMETRY,
    )
    install_common(app, service=SERVICE_NAME, max_body_bytes=settings.max_body_bytes)
    app.include_router(api.router)
    install_inbox(app, path=EVENTS_PATH[Peer.AUDIT], inbox_model=AuditInbox)
    return app


async def _refresh_metrics(resources: Resources, ctx: AuditContext) -> None:
    async with unit_of_work(resources.sessionmaker) as session:
        await metrics.refresh(session, ctx.collector, now=ctx.clock.now())
