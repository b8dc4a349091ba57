"""The triage_api app factory: `uvicorn --factory services.triage_api.app:create_app`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from services.shared.auth import ServiceTokenSigner
from services.shared.clients.peers import EVENTS_PATH, Peer, PeerClient
from services.shared.db.engine import is_sqlite
from services.shared.db.group_commit import GroupCommit
from services.shared.db.models import TriageInbox, TriageOutbox
from services.shared.db.session import unit_of_work, written_at_commit
from services.shared.outbox import EventHandler, Outbox, OutboxDelivery, install_inbox
from services.shared.outbox.writer import outbox_channel
from services.shared.pages import mount_page
from services.shared.resources import Resources, open_resources
from services.shared.schemas.events import Event, EventType
from services.shared.web import NO_NATIVE_TELEMETRY, background_tasks, install_common
from services.triage_api import SERVICE_NAME, lifecycle, router, service, ws
from services.triage_api.context import STREAM_CHANNEL, TriageContext, TriageMetrics
from services.triage_api.deps import Intake
from services.triage_api.settings import TriageSettings

WEB = Path(__file__).parent / "web"


def router_event_handlers(ctx: TriageContext) -> dict[str, EventHandler]:
    async def handle(session: AsyncSession, event: Event) -> None:
        await lifecycle.apply_router_event(session, ctx=ctx, event=event)

    return dict.fromkeys(
        (
            EventType.CONSULT_QUEUED,
            EventType.CONSULT_OFFERED,
            EventType.CONSULT_ACCEPTED,
            EventType.CONSULT_ADVISED,
            EventType.CONSULT_ESCALATED,
        ),
        handle,
    )


def create_app(
    settings: TriageSettings | None = None, *, resources: Resources | None = None
) -> FastAPI:
    """Build triage_api. With `resources` (the embedded app, tests) it uses them and leaves
    closing them to their owner; without, it builds its own from `settings`."""
    settings = settings or TriageSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            res = resources
            if res is None:
                res = await stack.enter_async_context(open_resources(settings))
            app.state.resources = res
            outbox = Outbox(
                service=SERVICE_NAME, model=TriageOutbox, notifier=res.notifier, clock=res.clock
            )
            ctx = TriageContext(
                settings=settings,
                outbox=outbox,
                notifier=res.notifier,
                clock=res.clock,
                metrics=TriageMetrics(res.registry),
            )
            app.state.triage = ctx
            batches = GroupCommit[service.NewCase](
                res.sessionmaker,
                partial(service.create_cases_together, ctx=ctx),
                max_batch=settings.intake_batch_max,
                name="case intake",
                # SQLite has one connection. On PostgreSQL three batches at once kept
                # triage-api's core busiest under the submission benchmark (two and
                # four did less well: bench/RESULTS.md).
                writers=1 if is_sqlite(res.database_url) else 3,
                opened=written_at_commit,
                keys_apart=partial(service.create_cases_keys_apart, ctx=ctx),
            )
            app.state.case_intake = Intake(ctx, batches, res.sessionmaker)
            app.state.event_handlers = router_event_handlers(ctx)
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
            app.state.refresh_metrics = partial(_refresh_metrics, res, delivery)
            for channel in (STREAM_CHANNEL, outbox_channel(SERVICE_NAME)):
                await res.notifier.listen(channel)
            tasks = await stack.enter_async_context(background_tasks())
            tasks.start(
                f"{SERVICE_NAME}-stream-watch",
                partial(
                    ctx.stream_watch.run,
                    maker=res.sessionmaker,
                    interval=settings.stream_poll_seconds,
                ),
            )
            if settings.background_tasks:
                tasks.start(f"{SERVICE_NAME}-outbox", delivery.run)
            yield

    app = FastAPI(
        title="reach triage_api",
        summary="Paramedics ask for a consultant's advice and follow their case live.",
        version="0.1.0",
        lifespan=lifespan,
        telemetry=NO_NATIVE_TELEMETRY,
    )
    install_common(app, service=SERVICE_NAME, max_body_bytes=settings.max_body_bytes)
    app.include_router(router.router)
    install_inbox(app, path=EVENTS_PATH[Peer.TRIAGE_API], inbox_model=TriageInbox)
    app.add_api_websocket_route("/v1/cases/{case_id}/stream", ws.case_stream)
    # The crew's page: a demonstration and training client of the API above.
    mount_page(app, prefix="/crew", html=WEB / "crew.html", assets=WEB)
    return app


async def _refresh_metrics(resources: Resources, delivery: OutboxDelivery) -> None:
    async with unit_of_work(resources.sessionmaker) as session:
        await delivery.refresh_metrics(session)
