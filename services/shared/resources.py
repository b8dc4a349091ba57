"""The long-lived resources of an app: engine, sessions, HTTP client, metrics registry,
notifier, clock and token verifier.

A service builds its own when run alone; the embedded app builds one set and hands it
to all three services, so they share one pool and one registry.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry, Gauge
from sqlalchemy.ext.asyncio import AsyncEngine

from services.shared.auth import JwksCache, TokenVerifier
from services.shared.clients.peers import Peer, PeerDirectory
from services.shared.clock import Clock, SystemClock
from services.shared.db.engine import create_engine, is_postgres
from services.shared.db.session import SessionMaker, create_sessionmaker
from services.shared.db.socket_reads import SocketReads, transactions_at_once
from services.shared.heap import process_gc_pauses, register_pause_metrics
from services.shared.notify import LocalNotifier, Notifier, PostgresNotifier
from services.shared.observability import HttpMetrics
from services.shared.outbox.delivery import OutboxMetrics
from services.shared.outbox.inbox import LocalReceiver
from services.shared.settings import Environment, ServiceSettings

JWT_SECRET_FILE = "jwt-secret"  # noqa: S105 -- a file name, not a secret
INTERNAL_SECRET_FILE = "internal-secret"  # noqa: S105


@dataclass
class Resources:
    database_url: str
    engine: AsyncEngine
    sessionmaker: SessionMaker
    # Calls to the world outside reach (the identity provider's JWKS).
    http: httpx.AsyncClient
    # Calls to peer services; in the embedded default its transport is the app itself.
    peer_http: httpx.AsyncClient
    peers: PeerDirectory
    registry: CollectorRegistry
    http_metrics: HttpMetrics
    outbox_metrics: OutboxMetrics
    notifier: Notifier
    clock: Clock
    tokens: TokenVerifier
    internal_secret: str
    # Set when people's tokens are HS256 (dev and tests): what `reach token` signs with.
    jwt_secret: str | None
    # The sockets' own transactions, a few at a time (a reconnection storm must not
    # starve requests of the pool).
    socket_reads: SocketReads
    # Peers running in this process (the embedded default), by name: their outbox events
    # are handed over in one transaction instead of over HTTP. Filled by the embedded app.
    local_peers: dict[str, LocalReceiver] = field(default_factory=dict)


def load_or_create_secret(path: Path) -> str:
    """A random secret kept in the data folder (mode 0600), made on first use."""
    if path.exists():
        value = path.read_text(encoding="utf-8").strip()
        if value:
            return value
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    return value


def resolve_secrets(settings: ServiceSettings) -> tuple[str | None, str]:
    """The people-token secret (None with a JWKS URL) and the internal secret.

    Outside production a missing secret is generated into the data folder; production
    settings refuse to start without them (see `ServiceSettings`).
    """
    jwt_secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
    internal = settings.internal_secret.get_secret_value() if settings.internal_secret else None
    generate = settings.environment != Environment.PRODUCTION
    if jwt_secret is None and settings.jwt_jwks_url is None and generate:
        jwt_secret = load_or_create_secret(settings.data_dir / JWT_SECRET_FILE)
    if internal is None:
        if not generate:
            raise ValueError("REACH_INTERNAL_SECRET is required")
        internal = load_or_create_secret(settings.data_dir / INTERNAL_SECRET_FILE)
    return jwt_secret, internal


def peer_directory_from(settings: ServiceSettings) -> PeerDirectory:
    urls = {
        Peer.TRIAGE_API: settings.triage_api_url,
        Peer.CONSULT_ROUTER: settings.consult_router_url,
        Peer.AUDIT: settings.audit_url,
    }
    return PeerDirectory({peer: str(url) for peer, url in urls.items() if url is not None})


@asynccontextmanager
async def open_resources(
    settings: ServiceSettings,
    *,
    clock: Clock | None = None,
    peer_transport: httpx.AsyncBaseTransport | None = None,
    peers: PeerDirectory | None = None,
) -> AsyncIterator[Resources]:
    """Build every resource from settings, and close them all on exit."""
    database_url = settings.resolved_database_url()
    if database_url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    jwt_secret, internal_secret = resolve_secrets(settings)
    engine = create_engine(
        database_url,
        pool_size=settings.database_pool_size,
        pool_timeout=settings.database_pool_timeout_seconds,
        echo=settings.database_echo,
    )
    notifier: Notifier = (
        PostgresNotifier(database_url, engine=engine)
        if is_postgres(database_url)
        else LocalNotifier()
    )
    http = httpx.AsyncClient(timeout=settings.peer_timeout_seconds)
    peer_http = (
        httpx.AsyncClient(transport=peer_transport, timeout=settings.peer_timeout_seconds)
        if peer_transport is not None
        else http
    )
    clock = clock or SystemClock()
    registry = CollectorRegistry(auto_describe=True)
    jwks = (
        JwksCache(str(settings.jwt_jwks_url), http, ttl_seconds=settings.jwt_jwks_cache_seconds)
        if settings.jwt_jwks_url is not None
        else None
    )
    sessionmaker = create_sessionmaker(engine)
    resources = Resources(
        database_url=database_url,
        engine=engine,
        sessionmaker=sessionmaker,
        http=http,
        peer_http=peer_http,
        peers=peers or peer_directory_from(settings),
        registry=registry,
        http_metrics=HttpMetrics(registry),
        outbox_metrics=OutboxMetrics(registry),
        notifier=notifier,
        clock=clock,
        tokens=TokenVerifier(
            secret=jwt_secret,
            internal_secret=internal_secret,
            jwks=jwks,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            leeway_seconds=settings.jwt_leeway_seconds,
            clock=clock,
        ),
        internal_secret=internal_secret,
        jwt_secret=jwt_secret,
        socket_reads=SocketReads(
            sessionmaker,
            # SQLite's pool is one connection, whatever the setting says.
            at_once=transactions_at_once(
                settings.database_pool_size if is_postgres(database_url) else 1
            ),
        ),
    )
    Gauge(
        "reach_socket_reads_waiting",
        "Websockets waiting their turn for a database transaction (a reconnection storm).",
        registry=registry,
    ).set_function(lambda: resources.socket_reads.waiting)
    register_pause_metrics(registry, process_gc_pauses())
    await notifier.start()
    try:
        yield resources
    finally:
        await notifier.stop()
        if peer_http is not http:
            await peer_http.aclose()
        await http.aclose()
        await engine.dispose()
