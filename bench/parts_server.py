"""`reach serve` with the event loop's CPU charged to the part of reach that spent it, for
`bench.case_parts`. Instrumentation a benchmark adds from outside, never part of a service.

Every callback the event loop runs is timed with the thread's CPU clock, and a callback
that steps a task is charged to the task: to its HTTP route, once the route is known
(`POST /v1/cases`), or to what the task runs (an outbox lane, the routing loop, a
transaction of its own). The event loop is asyncio's own here, not uvloop: uvloop's
callbacks are not Python objects to wrap (`bench/RESULTS.md` has the two side by side:
the same CPU a case). The garbage collector's passes are timed too, as a part of their
own (they also count in the part they interrupted).

Work a transport's own callback does (a socket read, and what the database driver
decodes in it) belongs to no task and is counted as the event loop's. SIGUSR1 starts the
count afresh; SIGUSR2 writes the parts so far as JSON to the file named by
`REACH_BENCH_PARTS_OUT`, with the process's CPU over the same time.

    python -m bench.parts_server serve --port 8000
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import signal
import sys
import time
from asyncio import events
from collections import Counter, defaultdict
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from services import cli

OUT_VARIABLE = "REACH_BENCH_PARTS_OUT"

_DEFAULT_TASK_NAME = re.compile(r"Task-\d+")


class Parts:
    """CPU seconds and loop steps by part, and the CPU of each live HTTP task (named only
    when it ends: its route is known once routed)."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.steps: Counter[str] = Counter()
        # A live HTTP task's CPU seconds and loop steps so far.
        self.by_task: dict[asyncio.Task[Any], tuple[float, int]] = {}
        self.names: dict[asyncio.Task[Any], str | dict[str, Any]] = {}
        self.parents: dict[asyncio.Task[Any], asyncio.Task[Any]] = {}
        self.started = time.process_time()

    def reset(self) -> None:
        self.cpu.clear()
        self.steps.clear()
        self.by_task.clear()
        self.started = time.process_time()

    def created(self, task: asyncio.Task[Any], parent: asyncio.Task[Any] | None) -> None:
        scope = _scope_of(task)
        if scope is not None:
            self.names[task] = scope
        elif parent is not None:
            self.parents[task] = parent

    def charge(self, task: asyncio.Task[Any], seconds: float) -> None:
        name = self.names.get(task)
        if name is None:
            name = self.names[task] = self._name_of(task)
        if isinstance(name, str):
            self.add(name, seconds)
        else:
            spent, steps = self.by_task.get(task, (0.0, 0))
            self.by_task[task] = (spent + seconds, steps + 1)
        if task.done():
            self.names.pop(task, None)
            if not isinstance(name, str):
                self.add(_route_of(name), *self.by_task.pop(task, (0.0, 0)))

    def add(self, name: str, seconds: float, steps: int = 1) -> None:
        self.cpu[name] += seconds
        self.steps[name] += steps

    def report(self) -> dict[str, Any]:
        for task, (seconds, steps) in self.by_task.items():  # live sockets
            scope = self.names.get(task)
            self.add(_route_of(scope) if isinstance(scope, dict) else "a task", seconds, steps)
        self.by_task.clear()
        return {
            "cpu": dict(self.cpu),
            "steps": dict(self.steps),
            "process_cpu": time.process_time() - self.started,
        }

    def _name_of(self, task: asyncio.Task[Any]) -> str:
        """An outbox lane by its service and lane; a task named when created (the
        background loops, a group commit's writer) by that name; one started by another
        task (a transaction run apart) as part of that task; else by its coroutine."""
        parent = self.parents.pop(task, None)
        coroutine = task.get_coro()
        frame: FrameType | None = getattr(coroutine, "cr_frame", None)
        if frame is not None and frame.f_code.co_qualname == "OutboxDelivery._run_lane":
            delivery = frame.f_locals.get("self")
            lane = "deferred" if frame.f_locals.get("deferred") else "prompt"
            return f"outbox delivery from {getattr(delivery, '_service', '?')} ({lane})"
        if not _DEFAULT_TASK_NAME.fullmatch(task.get_name()):
            return task.get_name()
        if parent is not None:
            named = self.names.get(parent) or self._name_of(parent)
            return f"{_route_of(named) if isinstance(named, dict) else named}, apart"
        return str(getattr(coroutine, "__qualname__", type(coroutine).__name__))


def _scope_of(task: asyncio.Task[Any]) -> dict[str, Any] | None:
    """The ASGI scope of an HTTP request's or a websocket's task (uvicorn's cycle)."""
    frame: FrameType | None = getattr(task.get_coro(), "cr_frame", None)
    scope = getattr(frame.f_locals.get("self"), "scope", None) if frame is not None else None
    return scope if isinstance(scope, dict) else None


def _route_of(scope: dict[str, Any]) -> str:
    route = getattr(scope.get("route"), "path", "(no route)")
    return f"{scope.get('method', 'WEBSOCKET')} {route}"


_parts = Parts()


def _install() -> None:
    original = events.Handle._run
    factories: set[asyncio.AbstractEventLoop] = set()

    def create_task(
        loop: asyncio.AbstractEventLoop, coroutine: Any, **options: Any
    ) -> asyncio.Task[Any]:
        task = asyncio.Task(coroutine, loop=loop, **options)
        _parts.created(task, asyncio.current_task(loop))
        return task

    def timed(handle: events.Handle) -> None:
        loop = handle._loop  # type: ignore[attr-defined]
        if loop not in factories:  # the server's loop, from its first callback on
            factories.add(loop)
            loop.set_task_factory(create_task)
            # Run by the loop between callbacks, never in the middle of one's counting.
            loop.add_signal_handler(signal.SIGUSR1, _parts.reset)
            loop.add_signal_handler(signal.SIGUSR2, _write_parts)
        started = time.thread_time()
        try:
            original(handle)
        finally:
            spent = time.thread_time() - started
            task = getattr(handle._callback, "__self__", None)  # type: ignore[attr-defined]
            if isinstance(task, asyncio.Task):
                _parts.charge(task, spent)
            else:
                _parts.add("event loop: I/O and other callbacks", spent)

    events.Handle._run = timed  # type: ignore[method-assign,assignment]

    collecting: list[float] = []

    def collector(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collecting[:] = [time.thread_time()]
        elif collecting:
            _parts.cpu[f"garbage collector, generation {info['generation']}"] += (
                time.thread_time() - collecting[0]
            )

    gc.callbacks.append(collector)
    serve = uvicorn.run
    uvicorn.run = lambda *args, **kwargs: serve(*args, **{**kwargs, "loop": "asyncio"})


def wait_for_parts(out: Path, *, seconds: float = 10.0) -> bool:
    """After SIGUSR2: wait until the server has written its parts to `out` (its loop
    handles the signal between callbacks); whether it has."""
    deadline = time.monotonic() + seconds
    while not (out.exists() and out.stat().st_size):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _write_parts() -> None:
    out = os.environ.get(OUT_VARIABLE)
    if out:
        with open(out, "w", encoding="utf-8") as sink:
            json.dump(_parts.report(), sink)


if __name__ == "__main__":
    _install()
    raise SystemExit(cli.main(sys.argv[1:]))
