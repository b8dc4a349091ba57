"""The consult_router app factory: `uvicorn --factory services.consult_router.app:create_app`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from services.consult_router import (
    SERVICE_NAME,
    api_consultant,
    api_rota,
    cases,
    presence,
    routing,
    ws,
)
from services.consult_router.context import (
    CONSULTANT_CHANNEL,
    QUEUE_CHANNEL,
    WORK_CHANNEL,
    RouterContext,
    RouterMetrics,
)
from services.consult_router.engine import RoutingEngine
from services.consult_router.metrics import refresh_gauges
from services.consult_router.settings import RouterSettings
from services.shared.auth import ServiceTokenSigner
from services.shared.clients.peers import EVENTS_PATH, Peer, PeerClient
from services.shared.db.models import ConsultInbox, ConsultOutbox
from services.shared.db.session import unit_of_work
from services.shared.outbox import (
    BatchHandler,
    EventHandler,
    Outbox,
    OutboxDelivery,
    install_inbox,
)
from services.shared.outbox.writer import outbox_channel
from services.shared.pages import mount_page
from services.shared.resources import Resources, open_resources
from services.shared.schemas.events import Event, EventType
from services.shared.web import NO_NATIVE_TELEMETRY, background_tasks, install_common

WEB = Path(__file__).parent / "web"


def triage_batch_handler(ctx: RouterContext) -> BatchHandler:
    async def handle(session: AsyncSession, events: list[Event]) -> None:
        if opened := await cases.apply_snapshots(session, ctx=ctx, events=events):
            await routing.route_arrivals(session, ctx, opened)

    return handle


def triage_event_handlers(ctx: RouterContext) -> dict[str, EventHandler]:
    async def handle(session: AsyncSession, event: Event) -> None:
        if opened := await cases.apply_snapshot(session, ctx=ctx, event=event):
            await routing.route_arrivals(session, ctx, opened)

    return dict.fromkeys(
        (
            EventType.CASE_SUBMITTED,
            EventType.CASE_UPDATED,
            EventType.CASE_CANCELLED,
            EventType.CASE_ACKNOWLEDGED,
        ),
        handle,
    )


def create_app(
    settings: RouterSettings | None = None, *, resources: Resources | None = None
) -> FastAPI:
    """Build consult_router. With `resources` (the embedded app, tests) it uses them and
    leaves closing them to their owner; without, it builds its own from `settings`."""
    settings = settings or RouterSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            res = resources
            if res is None:
                res = await stack.enter_async_context(open_resources(settings))
            app.state.resources = res
            outbox = Outbox(
                service=SERVICE_NAME, model=ConsultOutbox, notifier=res.notifier, clock=res.clock
            )
            ctx = RouterContext(
                settings=settings,
                outbox=outbox,
                notifier=res.notifier,
                clock=res.clock,
                metrics=RouterMetrics(res.registry),
            )
            app.state.router = ctx
            app.state.event_handlers = triage_event_handlers(ctx)
            app.state.event_batch_handler = triage_batch_handler(ctx)
            engine = RoutingEngine(ctx=ctx, sessionmaker=res.sessionmaker)
            app.state.engine = engine
            delivery = OutboxDelivery(
                outbox=outbox,
                sessionmaker=res.sessionmaker,
                peers=PeerClient(
                    res.peer_http,
                    res.peers,
                    ServiceTokenSigner(res.internal_secret, service=SERVICE_NAME, clock=res.clock),
                    timeout_seconds=settings.peer_timeout_seconds,
                ),
                notifier=res.notifier,
                clock=res.clock,
                settings=settings,
                metrics=res.outbox_metrics,
                local_peers=res.local_peers,
                deferred=frozenset({Peer.AUDIT}),
                defer_seconds=settings.outbox_audit_linger_seconds,
            )
            app.state.outbox_delivery = delivery
            app.state.refresh_metrics = partial(_refresh_metrics, res, ctx, delivery)
            for channel in (
                WORK_CHANNEL,
                CONSULTANT_CHANNEL,
                QUEUE_CHANNEL,
                outbox_channel(SERVICE_NAME),
            ):
                await res.notifier.listen(channel)
            tasks = await stack.enter_async_context(background_tasks())
            # None is work anyone claims: every replica keeps its own consultants'
            # presence alive, broadcasts to its own dashboards and watches the log for them.
            tasks.start(
                f"{SERVICE_NAME}-presence",
                partial(presence.keep_alive, ctx=ctx, maker=res.sessionmaker),
            )
            tasks.start(
                f"{SERVICE_NAME}-queue-feed",
                partial(
                    ctx.queue_feed.run,
                    notifier=res.notifier,
                    channel=QUEUE_CHANNEL,
                    load=partial(ctx.queue_lines.read, res.engine, ctx.clock),
                ),
            )
            tasks.start(
                f"{SERVICE_NAME}-log-watch",
                partial(
                    ctx.log_watch.run,
                    maker=res.sessionmaker,
                    interval=settings.stream_poll_seconds,
                ),
            )
            if settings.background_tasks:
                tasks.start(f"{SERVICE_NAME}-routing", engine.run)
                tasks.start(f"{SERVICE_NAME}-outbox", delivery.run)
            yield

    app = FastAPI(
        title="reach consult_router",
        summary="Gets every waiting crew a consultant: rota, live offers, escalation.",
        version="0.1.0",
        lifespan=lifespan,
        telemetry=NO_NATIVE_TELEMETRY,
    )
    install_common(app, service=SERVICE_NAME, max_body_bytes=settings.max_body_bytes)
    app.include_router(api_rota.router)
    app.include_router(api_consultant.router)
    install_inbox(app, path=EVENTS_PATH[Peer.CONSULT_ROUTER], inbox_model=ConsultInbox)
    app.add_api_websocket_route("/v1/consultant/stream", ws.consultant_stream)
    mount_page(app, prefix="/dashboard", html=WEB / "dashboard.html", assets=WEB)
    return app


async def _refresh_metrics(
    resources: Resources, ctx: RouterContext, delivery: OutboxDelivery
) -> None:
    async with unit_of_work(resources.sessionmaker) as session:
        await delivery.refresh_metrics(session)
        await refresh_gauges(session, ctx)
