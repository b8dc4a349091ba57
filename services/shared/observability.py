"""Logging, and Prometheus metrics on a registry per app.

Never the global `REGISTRY`: three services in one process, or many test apps, would
collide. In the embedded default the services share one registry and `HttpMetrics`, and
the `service` label tells them apart. Labels are route templates and bounded vocabularies,
never raw paths or anything a patient said.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.shared.request_context import current_request_id

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class HttpMetrics:
    """Per-route request counts and latency, shared by every app on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "reach_http_requests",
            "HTTP requests answered, by route template and status.",
            ["service", "method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "reach_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template.",
            ["service", "method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class MetricsMiddleware:
    """Counts and times every HTTP request by the route template it matched.

    The metrics object is looked up on the owning app's resources per request, because
    middleware is built before the lifespan has made them.
    """

    def __init__(self, app: ASGIApp, *, owner: Any, service: str) -> None:
        self.app = app
        self.owner = owner
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            metrics: HttpMetrics = self.owner.state.resources.http_metrics
            route = route_template(scope)
            method = str(scope.get("method", "GET"))
            metrics.requests.labels(self.service, method, route, str(status)).inc()
            metrics.latency.labels(self.service, method, route).observe(
                time.perf_counter() - started
            )


async def metrics_endpoint(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.resources.registry
    refresh = getattr(request.app.state, "refresh_metrics", None)
    if refresh is not None:
        await refresh()
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def log_failure(logger: logging.Logger, what: str, exc: BaseException) -> None:
    """Log an exception by its kind and its stack, never its message.

    Messages may carry data: a database error repeats the statement's parameters, and
    those may be a patient's. The kind and the frames are enough to find the fault.
    """
    frames = "".join(traceback.format_tb(exc.__traceback__))
    logger.error("%s: %s\n%s", what, type(exc).__name__, frames)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request id of the task that logged it."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "at": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = current_request_id()
        if request_id:
            payload["request_id"] = request_id
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def configure_logging(*, level: str = "INFO", json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("reach")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
