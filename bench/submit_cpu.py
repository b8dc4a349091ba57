"""Case submission's CPU per request, in process: triage-api's `POST /v1/cases` against the
baseline app, each called directly as an ASGI app (no sockets, no HTTP parsing, which
cost both the same), by 16 concurrent callers, on SQLite and on PostgreSQL.

Why beside `submit_throughput`: on a shared VM wrk's requests per second move +-20% for
one build from run to run, which hides any change under ~10%. CPU seconds a request,
counted by the process itself over a few thousand requests, move a few per cent; so this
is the measure to judge a change to the submission path by, and wrk's the one to report.

What is counted is everything the process spends: the request, the group commit, the
database driver's thread (aiosqlite's; asyncpg runs in the loop), and for triage-api the
outbox delivery of every case to the router and audit, which is waited for before the
clock stops. The peers are outside the process: a stand-in answers their endpoints
(`httpx.MockTransport`), so their CPU is not counted, as a remote peer's would not be.
PostgreSQL's own CPU is not counted for either app.

Each app runs in its own process, pinned to the server core, the apps taking turns
round after round; the ratio (baseline's CPU per request / triage-api's) is what the
throughput ratio would be if both were CPU-bound. Target: >= 1.0.

    python -m bench.submit_cpu [--requests 3000] [--rounds 3] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx

from bench.baseline_app import create_app as create_baseline
from bench.harness import (
    BENCH_INTERNAL_SECRET,
    BENCH_SECRET,
    PYTHON,
    ROOT,
    SERVER_CPU,
    base_env,
    fail,
    fresh_postgres,
    fresh_sqlite,
    machine_report,
    migrate,
    pinned,
    pool_for,
)
from services.shared.auth import mint_token
from services.shared.clock import SystemClock
from services.shared.heap import prepare_heap_for_serving
from services.shared.jsoncodec import json_bytes, load_json
from services.shared.resources import open_resources
from services.triage_api.app import create_app
from services.triage_api.settings import TriageSettings
from tests.factories import case_body

APPS = ("baseline", "triage-api")
DRAIN_TIMEOUT_SECONDS = 120.0

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
AsgiApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
                   Awaitable[None]]  # fmt: skip


class StandInPeers:
    """The router and audit, answering `/internal/events` with "accepted" for every event,
    and counting them, so the caller can wait until every case has been delivered."""

    def __init__(self) -> None:
        self.delivered = 0
        self._target = 0
        self._reached = asyncio.Event()

    def handle(self, request: httpx.Request) -> httpx.Response:
        # Parsed and answered with orjson: what this stand-in spends is counted against
        # triage-api (a real peer spends it in its own process), so it is kept small.
        events = load_json(request.content)["events"]
        self.delivered += len(events)
        if self.delivered >= self._target:
            self._reached.set()
        results = [{"id": event["id"], "outcome": "accepted"} for event in events]
        return httpx.Response(
            200, content=json_bytes({"results": results}),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip

    async def wait_for(self, total: int) -> None:
        self._target = total
        self._reached.clear()
        if self.delivered < total:
            async with asyncio.timeout(DRAIN_TIMEOUT_SECONDS):
                await self._reached.wait()


async def post(app: AsgiApp, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
    """One `POST /v1/cases` through the app; its status code."""
    status = 0
    answered = asyncio.Event()
    sent_body = False

    async def receive() -> Message:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            answered.set()

    scope: Scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/cases", "raw_path": b"/v1/cases", "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }  # fmt: skip
    await app(scope, receive, send)
    return status


async def submit_many(app: AsgiApp, *, count: int, concurrency: int, run: str) -> int:
    """`count` new cases from `concurrency` callers at once; how many were not 201."""
    token = mint_token(BENCH_SECRET, sub="crew-bench", role="paramedic", clock=SystemClock())
    body = json.dumps(case_body()).encode()
    common = [(b"content-type", b"application/json"), (b"authorization", f"Bearer {token}".encode()),
              (b"content-length", str(len(body)).encode())]  # fmt: skip
    next_index = 0
    failures = 0

    async def caller() -> None:
        nonlocal next_index, failures
        while next_index < count:
            next_index += 1
            key = f"bench-{run}-{next_index}".encode()
            if await post(app, [*common, (b"idempotency-key", key)], body) != 201:
                failures += 1

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return failures


async def measure_in_process(
    app_name: str, url: str, *, requests: int, warm_up: int, concurrency: int
) -> dict[str, float]:
    """Run in the child: warm up, then count the CPU of `requests` submissions."""
    async with contextlib.AsyncExitStack() as stack:
        peers = StandInPeers()
        app = await stack.enter_async_context(_started(app_name, url, peers))
        events_per_case = 0 if app_name == "baseline" else 2  # the router's and audit's
        run = uuid.uuid4().hex[:12]
        failures = await submit_many(app, count=warm_up, concurrency=concurrency, run=run + "w")
        await peers.wait_for(events_per_case * warm_up)
        gc.collect()
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        failures += await submit_many(app, count=requests, concurrency=concurrency, run=run)
        await peers.wait_for(events_per_case * (warm_up + requests))
        cpu = time.process_time() - cpu_before
        wall = time.perf_counter() - wall_before
    return {
        "cpu_ms_per_request": cpu / requests * 1000,
        "requests_per_second": requests / wall,
        "cpu_share": cpu / wall,
        "failures": failures,
    }


@contextlib.asynccontextmanager
async def _started(app_name: str, url: str, peers: StandInPeers) -> AsyncIterator[AsgiApp]:
    """The app, its lifespan entered."""
    if app_name == "baseline":
        os.environ["REACH_DATABASE_URL"] = url
        baseline = create_baseline()
        async with baseline.router.lifespan_context(baseline):
            yield baseline
        return
    settings = TriageSettings(
        database_url=url,
        data_dir=Path(tempfile.mkdtemp(prefix="reach-bench-cpu-")),
        jwt_secret=BENCH_SECRET,
        internal_secret=BENCH_INTERNAL_SECRET,
        consult_router_url="http://consult-router.bench",
        audit_url="http://audit.bench",
        log_level="WARNING",
    )
    transport = httpx.MockTransport(peers.handle)
    async with open_resources(settings, peer_transport=transport) as resources:
        app = create_app(settings, resources=resources)
        async with app.router.lifespan_context(app):
            # As `reach serve` does once start-up is done (`FreezeAfterStartup`). The
            # baseline, served by plain uvicorn as in `submit_throughput`, does not.
            prepare_heap_for_serving()
            yield app


def run_child(app_name: str, url: str, args: argparse.Namespace) -> dict[str, float]:
    command = [PYTHON, "-m", "bench.submit_cpu", "--child", app_name, "--url", url,
               "--requests", str(args.requests), "--warm-up", str(args.warm_up),
               "--concurrency", str(args.concurrency)]  # fmt: skip
    done = subprocess.run(
        pinned(command, SERVER_CPU),
        env=base_env(**pool_for(args.concurrency)),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        fail(f"{app_name} could not be measured:\n{done.stderr[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--warm-up", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=APPS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_run_in_loop(args)))
        return
    print(machine_report())
    print(f"load      {args.concurrency} callers in the app's own process, {args.requests} "
          f"requests after {args.warm_up} to warm up; {args.rounds} rounds, the apps in turn")  # fmt: skip
    print()
    print(f"{'backend':<11}{'round':>5}  {'app':<12}{'CPU ms/req':>11}{'req/s':>8}"
          f"{'CPU busy':>9}{'failed':>7}")  # fmt: skip
    ratios: dict[str, list[float]] = {}
    backends = {"sqlite": fresh_sqlite, "postgresql": fresh_postgres}
    for backend, fresh in backends.items():
        for round_number in range(1, args.rounds + 1):
            measured: dict[str, dict[str, float]] = {}
            for app_name in APPS:
                url = fresh(f"reach_bench_cpu_{app_name.replace('-', '_')}")
                if url is None:
                    break
                if app_name != "baseline":
                    migrate(url)
                measured[app_name] = result = run_child(app_name, url, args)
                print(f"{backend:<11}{round_number:>5}  {app_name:<12}"
                      f"{result['cpu_ms_per_request']:>11.3f}{result['requests_per_second']:>8.0f}"
                      f"{result['cpu_share']:>9.0%}{result['failures']:>7.0f}")  # fmt: skip
            if len(measured) < len(APPS):
                print(f"skipping {backend}: no PostgreSQL server answers")
                break
            ratios.setdefault(backend, []).append(
                measured["baseline"]["cpu_ms_per_request"]
                / measured["triage-api"]["cpu_ms_per_request"]
            )
    if not ratios:
        fail("nothing could be measured")
    print()
    for backend, values in ratios.items():
        print(f"{backend:<11} baseline's CPU per request / triage-api's "
              f"{statistics.median(values):.2f}x (rounds {min(values):.2f}-{max(values):.2f}; "
              "target >= 1.0)")  # fmt: skip


def _run_in_loop(args: argparse.Namespace) -> dict[str, float]:
    """The child's measurement, on the event loop uvicorn would use."""
    measurement = measure_in_process(
        args.child, args.url, requests=args.requests, warm_up=args.warm_up,
        concurrency=args.concurrency,
    )  # fmt: skip
    try:
        import uvloop
    except ImportError:
        return asyncio.run(measurement)
    result: dict[str, float] = uvloop.run(measurement)
    return result


if __name__ == "__main__":
    main()
