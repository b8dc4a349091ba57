"""What every service app has: request ids, request guards, error envelope, metrics,
health and readiness, and background tasks that live and die with the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.telemetry import TelemetryConfig
from sqlalchemy import text
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.shared.db.engine import database_unreachable
from services.shared.errors import install_error_handlers
from services.shared.observability import MetricsMiddleware, log_failure, metrics_endpoint
from services.shared.request_context import (
    accept_or_new_request_id,
    current_request_id,
    reset_request_id,
    set_request_id,
)
from services.shared.ws import CLOSE_TRY_AGAIN_LATER, SOCKET_SEND_SCOPE_KEY

logger = logging.getLogger("reach.web")

REQUEST_ID_HEADER = "x-request-id"
# FastAPI's own OpenTelemetry bridge, off in every app (`FastAPI(telemetry=...)`). reach's
# observability is its Prometheus metrics and its logs, which never carry patient data;
# the bridge's logs record validation failures and exception messages, which can quote
# what a client sent, for any OpenTelemetry provider a library in the process sets up.
# Off, it also stops asking OpenTelemetry for its three providers on every request
# (about 1% of the embedded default's CPU under the submission benchmark).
NO_NATIVE_TELEMETRY: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
}
INTERNAL_PREFIX = "/internal/"
# Peers post batches of events, which may be larger than anything a person sends.
INTERNAL_MAX_BODY_BYTES = 32 * 1024 * 1024
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
READY_TIMEOUT_SECONDS = 2.0


async def _send_envelope(
    send: Send,
    status: int,
    code: str,
    detail: str,
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps({"error": code, "detail": detail, "request_id": current_request_id()})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})


class RequestContextMiddleware:
    """Outermost: gives every request an id (kept from `X-Request-ID` if sane), echoes it on
    the response, and turns anything unhandled into a generic 500 in the envelope."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        incoming = headers.get(REQUEST_ID_HEADER.encode())
        request_id = accept_or_new_request_id(incoming.decode("latin-1") if incoming else None)
        token = set_request_id(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER.encode(), request_id.encode()),
                ]
            await send(message)

        # A socket's frames pass straight through: the id goes on HTTP responses only, and
        # a broadcast to hundreds of dashboards would pay for the wrapper on every frame.
        # For the same reason the server's own `send` is kept for the socket's `Sender`,
        # below the framework's wrappers (see services.shared.ws).
        passed_on: Send = send_with_id
        if scope["type"] != "http":
            passed_on = scope[SOCKET_SEND_SCOPE_KEY] = send
        try:
            await self.app(scope, receive, passed_on)
        except Exception as exc:
            if database_unreachable(exc):
                logger.warning(
                    "database unreachable on %s %s", scope.get("method", "WS"), _route_of(scope)
                )
                if scope["type"] == "http" and not started:
                    await _send_envelope(
                        send_with_id,
                        503,
                        "database_unavailable",
                        "the service's database cannot take this request now; retry shortly",
                        headers=[(b"retry-after", b"2")],
                    )
                elif scope["type"] == "websocket":
                    # Said, rather than the connection just dropping: the client waits
                    # and reconnects with `after`.
                    with contextlib.suppress(Exception):
                        await send(
                            {
                                "type": "websocket.close",
                                "code": CLOSE_TRY_AGAIN_LATER,
                                "reason": "the database is not reachable; reconnect shortly",
                            }
                        )
                return
            # Where it failed and what kind of error, never the message: a message may
            # carry values from the request, and those may be a patient's.
            log_failure(logger, f"unhandled on {scope.get('method', 'WS')} {_route_of(scope)}", exc)
            if scope["type"] == "http" and not started:
                await _send_envelope(
                    send_with_id,
                    500,
                    "internal_error",
                    "something went wrong on our side; quote the request id if you report it",
                )
        finally:
            reset_request_id(token)


def _route_of(scope: Scope) -> str:
    route = scope.get("route")
    return str(getattr(route, "path", "an unmatched path"))


class RequestGuardMiddleware:
    """Refuses oversized bodies (413) before anything parses them, and bodies that are
    not JSON (415) on the JSON API."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = INTERNAL_MAX_BODY_BYTES if path.startswith(INTERNAL_PREFIX) else self.max_body_bytes
        headers = dict(scope.get("headers", ()))
        length_header = headers.get(b"content-length")
        if length_header is not None:
            try:
                length = int(length_header)
            except ValueError:
                await _send_envelope(send, 400, "bad_request", "Content-Length is not a number")
                return
            if length > limit:
                await _send_envelope(send, 413, "payload_too_large", _too_large(limit))
                return
            if length > 0 and not _is_json(headers.get(b"content-type")):
                await _send_envelope(send, 415, "unsupported_media_type", _not_json())
                return
            await self.app(scope, receive, send)
            return
        # No length (chunked): read the body up to the limit, then replay it.
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _send_envelope(send, 413, "payload_too_large", _too_large(limit))
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        if size > 0 and not _is_json(headers.get(b"content-type")):
            await _send_envelope(send, 415, "unsupported_media_type", _not_json())
            return
        await self.app(scope, _replay(b"".join(chunks), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _is_json(content_type: bytes | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


def _too_large(limit: int) -> str:
    return f"the request body is larger than {limit} bytes"


def _not_json() -> str:
    return "send the body as application/json"


def health_router() -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process is up and serving."""
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        """Readiness: the database answers. A load balancer sends no traffic until it does."""
        engine = request.app.state.resources.engine
        try:
            async with asyncio.timeout(READY_TIMEOUT_SECONDS):
                async with engine.connect() as connection:
                    await connection.execute(text("SELECT 1"))
        except Exception:  # any failure to reach the database means not ready
            return JSONResponse(
                {"status": "unavailable", "detail": "the database is not reachable"},
                status_code=503,
            )
        return JSONResponse({"status": "ok"})

    router.add_api_route("/metrics", metrics_endpoint, include_in_schema=False)
    return router


def install_common(app: FastAPI, *, service: str, max_body_bytes: int) -> None:
    """Middleware, error handlers and the operations endpoints every service has."""
    install_error_handlers(app)
    app.include_router(health_router())
    app.add_middleware(MetricsMiddleware, owner=app, service=service)
    app.add_middleware(RequestGuardMiddleware, max_body_bytes=max_body_bytes)
    # Added last, so outermost: it sees every request and every failure.
    app.add_middleware(RequestContextMiddleware)


BackgroundLoop = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


class BackgroundTasks:
    """Long-running loops owned by an app's lifespan, started and stopped together.

    Each loop is given a `stopping` event and returns soon after it is set: a loop is
    asked to finish its pass rather than cancelled in the middle of a database call,
    which could leave its connection half-closed. One that has not finished within
    `STOP_GRACE_SECONDS` is cancelled. A loop that crashes is logged and restarted after a
    pause, so one bad pass never silently stops deliveries or timers.
    """

    STOP_GRACE_SECONDS = 10.0

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, name: str, loop: BackgroundLoop) -> None:
        self._tasks.append(asyncio.create_task(self._supervise(name, loop), name=name))

    async def _supervise(self, name: str, loop: BackgroundLoop) -> None:
        while not self.stopping.is_set():
            try:
                await loop(self.stopping)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log_failure(logger, f"background loop {name} crashed; restarting", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), timeout=1.0)

    async def stop(self) -> None:
        self.stopping.set()
        if not self._tasks:
            return
        _, late = await asyncio.wait(self._tasks, timeout=self.STOP_GRACE_SECONDS)
        for task in late:
            logger.warning("background loop %s did not stop in time; cancelling", task.get_name())
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()


@contextlib.asynccontextmanager
async def background_tasks() -> AsyncIterator[BackgroundTasks]:
    tasks = BackgroundTasks()
    try:
        yield tasks
    finally:
        await tasks.stop()
