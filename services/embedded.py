"""The embedded default: every service in one process, on one port, sharing one set of
resources (one database pool, one metrics registry, one notifier).

Requests are dispatched by path prefix to each service's own app, built by its own
factory, so a client sees exactly the paths it sees when the services run split. The
parent app's lifespan builds the shared resources and runs every child's lifespan, which
Starlette would not do for mounted apps. Events between services go through the same
outbox and the same receiving inbox as when split; only the hop differs: the delivery
hands a batch to the peer's inbox and marks it delivered in one transaction, where split
services post it to the peer's internal endpoint.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import httpx
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from services.audit import ROUTE_PREFIXES as AUDIT_PREFIXES
from services.audit.app import create_app as create_audit_app
from services.audit.settings import AuditSettings
from services.consult_router import ROUTE_PREFIXES as ROUTER_PREFIXES
from services.consult_router.app import create_app as create_router_app
from services.consult_router.settings import RouterSettings
from services.shared.clients.peers import PeerDirectory
from services.shared.clock import Clock
from services.shared.devauth import dev_auth_router
from services.shared.resources import Resources, open_resources
from services.shared.web import NO_NATIVE_TELEMETRY, install_common
from services.triage_api import ROUTE_PREFIXES as TRIAGE_PREFIXES
from services.triage_api.app import create_app as create_triage_app
from services.triage_api.settings import TriageSettings

SERVICE_NAME = "embedded"


class EmbeddedSettings(TriageSettings, RouterSettings, AuditSettings):
    """Every service's settings in one object (they share the `REACH_` names)."""


@dataclass
class _Child:
    name: str
    prefixes: tuple[str, ...]
    app: FastAPI


@dataclass
class EmbeddedApp:
    """An ASGI app: the parent (health, metrics, lifespan) plus the services by prefix."""

    settings: EmbeddedSettings
    clock: Clock | None = None
    parent: FastAPI = field(init=False)
    children: dict[str, FastAPI] = field(default_factory=dict, init=False)
    _routes: list[tuple[str, ASGIApp]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.parent = FastAPI(
            title="reach",
            summary="Remote pre-hospital triage: every service in one process.",
            lifespan=self._lifespan,
            telemetry=NO_NATIVE_TELEMETRY,
        )
        install_common(
            self.parent, service=SERVICE_NAME, max_body_bytes=self.settings.max_body_bytes
        )
        self.parent.include_router(dev_auth_router(self.settings))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            path: str = scope["path"]
            for prefix, app in self._routes:
                if path == prefix or path.startswith(prefix + "/"):
                    await app(scope, receive, send)
                    return
        await self.parent(scope, receive, send)

    @asynccontextmanager
    async def _lifespan(self, parent: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            resources = await stack.enter_async_context(
                open_resources(
                    self.settings,
                    clock=self.clock,
                    peer_transport=httpx.ASGITransport(app=self),
                    peers=PeerDirectory.embedded(),
                )
            )
            parent.state.resources = resources
            children = self._build_children(resources)
            # Events between the services here are handed over in one transaction: the same
            # outbox rows and the same receiving inbox as over HTTP, without the round trip.
            resources.local_peers.update(
                {child.name: child.app.state.local_receiver for child in children}
            )
            for child in children:
                await stack.enter_async_context(child.app.router.lifespan_context(child.app))
                self.children[child.name] = child.app
                self._routes.extend((prefix, child.app) for prefix in child.prefixes)
            parent.state.refresh_metrics = _refresh_all(children)
            try:
                yield
            finally:
                self._routes.clear()
                self.children.clear()

    def _build_children(self, resources: Resources) -> list[_Child]:
        # Each service: its name, the path prefixes it answers, its own app factory.
        services: list[tuple[str, tuple[str, ...], Callable[..., FastAPI]]] = [
            ("triage_api", TRIAGE_PREFIXES, create_triage_app),
            ("consult_router", ROUTER_PREFIXES, create_router_app),
            ("audit", AUDIT_PREFIXES, create_audit_app),
        ]
        return [
            _Child(name, prefixes, factory(self.settings, resources=resources))
            for name, prefixes, factory in services
        ]


def _refresh_all(children: list[_Child]) -> Callable[[], Awaitable[None]]:
    async def refresh() -> None:
        hooks = [getattr(child.app.state, "refresh_metrics", None) for child in children]
        await asyncio.gather(*(hook() for hook in hooks if hook is not None))

    return refresh


def create_app(
    settings: EmbeddedSettings | None = None, *, clock: Clock | None = None
) -> EmbeddedApp:
    """`uvicorn --factory services.embedded:create_app` runs the embedded default."""
    return EmbeddedApp(settings or EmbeddedSettings(), clock=clock)
