"""Every endpoint and dependency of every service is a coroutine.

FastAPI runs a plain `def` endpoint or dependency in a worker thread: a hop to the thread
pool and back on every request that uses it (measured: a tenth of triage-api's CPU on
case submission, for three dependencies that only read `app.state`). Nothing reach does
in a request blocks, so nothing needs the pool.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, APIWebSocketRoute

from services.embedded import EmbeddedApp


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    if dependant.call is not None:
        yield dependant.call
    for sub in dependant.dependencies:
        yield from _calls(sub)


def _runs_on_the_loop(call: Callable[..., Any]) -> bool:
    # A dependency may be an instance with an async __call__.
    targets = (call, type(call).__call__) if not inspect.isfunction(call) else (call,)
    return any(inspect.iscoroutinefunction(t) or inspect.isasyncgenfunction(t) for t in targets)


def _api_routes(routes: Iterable[Any]) -> Iterator[APIRoute | APIWebSocketRoute]:
    for route in routes:
        if isinstance(route, APIRoute | APIWebSocketRoute):
            yield route
        # Included routers are kept whole (FastAPI 0.16x), mounts hold their own routes.
        inner = getattr(getattr(route, "original_router", route), "routes", None)
        if inner is not None and inner is not routes:
            yield from _api_routes(inner)


async def test_no_endpoint_or_dependency_runs_in_the_thread_pool(embedded: EmbeddedApp) -> None:
    apps: list[FastAPI] = [embedded.parent, *embedded.children.values()]
    routes = [route for app in apps for route in _api_routes(app.routes)]
    assert len(routes) > 30, "the walk reached the services' routes"
    threaded = [
        f"{route.path}: {call.__module__}.{call.__qualname__}"
        for route in routes
        for call in _calls(route.dependant)
        if not _runs_on_the_loop(call)
    ]
    assert threaded == []
