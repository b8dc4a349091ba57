"""Routing latency: from `POST /v1/cases` returning to the offer arriving on a connected
consultant's websocket (and, beside it, from the POST being sent), at a steady rate of cases, on the embedded default (SQLite) and on
PostgreSQL. The yardstick is the round trip of `GET /healthz` measured in the same run.

Targets: p50 <= 5 ms and p99 <= 25 ms at 50 cases/s.

Ten consultants on shift for frailty keep a socket open; each case is cancelled by its
crew as soon as its offer arrives, so consultants are free for the next one and the open
queue stays short, as it does in service. Beside the latencies: the server's CPU per case
over the run (a case's whole life: submitted, routed, offered, cancelled, told to the other
services and audit), which says how close a rate is to the one core the process has.

    python -m bench.routing_latency [--rates 10 50] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
from websockets.asyncio.client import connect

from bench.harness import (
    LOAD_CPU,
    PYTHON,
    Server,
    base_env,
    core_busy,
    cpu_seconds,
    database_cpu_seconds,
    databases,
    fail,
    free_port,
    machine_report,
    migrate,
    pin_load_generator,
    serve,
    token,
)
from bench.lean_http import ConnectionLost, LeanClient
from tests.factories import case_body

CONSULTANTS = 10
WARM_UP_CASES = 20


@dataclass
class Run:
    sent_at: dict[str, float] = field(default_factory=dict)  # reference -> POST returned
    posted_at: dict[str, float] = field(default_factory=dict)  # reference -> POST sent
    offered_at: dict[str, float] = field(default_factory=dict)  # reference -> first offer
    health_ms: list[float] = field(default_factory=list)
    errors: int = 0
    # The server's CPU seconds from the first case sent to the last offer's arrival (and
    # its cancellation): what a case's whole life costs it, beside the latency.
    server_cpu_seconds: float = 0.0
    # Whether the rest of the machine kept up: the database's CPU, and the load
    # generator's (this process) beside all that ran on its core.
    database_cpu_seconds: float = 0.0
    load_share: float = 0.0
    load_core_busy: float = 0.0
    cancels: set[asyncio.Task[None]] = field(default_factory=set)


async def seed(http: httpx.AsyncClient) -> None:
    admin = {"Authorization": f"Bearer {token('admin', 'bench-admin')}"}
    now = datetime.now(UTC)
    for index in range(CONSULTANTS):
        consultant = f"dr-{index}"
        response = await http.put(
            f"/v1/consultants/{consultant}",
            json={"name": consultant, "grade": "consultant", "specialties": ["frailty"]},
            headers=admin,
        )
        response.raise_for_status()
        response = await http.post(
            "/v1/shifts",
            json={
                "consultant_id": consultant, "specialty": "frailty",
                "starts_at": (now - timedelta(hours=1)).isoformat(),
                "ends_at": (now + timedelta(hours=6)).isoformat(),
            },
            headers=admin,
        )  # fmt: skip
        response.raise_for_status()


async def consultant(base: str, index: int, run: Run, http: LeanClient) -> None:
    url = base.replace("http://", "ws://") + "/v1/consultant/stream"
    crew = {"Authorization": f"Bearer {token('paramedic', 'bench-crew')}"}
    async with connect(url, max_queue=None) as socket:
        await socket.send(
            json.dumps({"type": "hello", "token": token("consultant", f"dr-{index}")})
        )
        await socket.send(json.dumps({"type": "status", "status": "available"}))
        while True:
            message = json.loads(await socket.recv())
            if message["type"] != "offer":
                continue
            arrived = time.perf_counter()
            run.offered_at.setdefault(message["case"]["reference"], arrived)
            # Freed for the next case by its crew's cancellation, at once. Whatever the
            # case: one left open by an earlier rate that fell behind is offered first
            # and, left alone, would hold this consultant until its deadline.
            task = asyncio.create_task(cancel(http, run, message["case"]["id"], crew))
            run.cancels.add(task)
            task.add_done_callback(run.cancels.discard)


async def cancel(http: LeanClient, run: Run, case_id: str, crew: dict[str, str]) -> None:
    path, body = f"/v1/cases/{case_id}/cancel", {"reason": "benchmark"}
    try:
        response = await http.post(path, json=body, headers=crew)
    except ConnectionLost:  # sent again: a repeated cancellation changes nothing
        response = await http.post(path, json=body, headers=crew)
    if response.status_code != 200:
        run.errors += 1


async def submit(
    http: LeanClient, run: Run, number: int, crew: dict[str, str], *, record: bool
) -> None:
    headers = {**crew, "Idempotency-Key": f"bench-routing-{number}-{time.time_ns()}"}
    posted = time.perf_counter()
    body = case_body()
    try:
        response = await http.post("/v1/cases", json=body, headers=headers)
    except ConnectionLost:
        # A kept-alive connection the server closed as it was reused: sent again with the
        # same key, as a crew's app would, it is stored once.
        response = await http.post("/v1/cases", json=body, headers=headers)
    returned = time.perf_counter()
    # 200: the resent submission had been stored the first time, and is answered as such.
    if response.status_code not in (200, 201):
        run.errors += 1
        return
    case = response.json()
    if record:
        run.sent_at[case["reference"]] = returned
        run.posted_at[case["reference"]] = posted


async def health(http: LeanClient, run: Run, stop: asyncio.Event) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await http.get("/healthz")
        run.health_ms.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.05)


async def measure(
    base: str, rate: float, seconds: float, server_cpu: Callable[[], float]
) -> tuple[Run, int]:
    run = Run()
    async with httpx.AsyncClient(base_url=base, timeout=30) as admin:
        await seed(admin)
    crew = {"Authorization": f"Bearer {token('paramedic', 'bench-crew')}"}
    async with LeanClient(base, connections=100) as http:
        sockets = [asyncio.create_task(consultant(base, i, run, http)) for i in range(CONSULTANTS)]
        await asyncio.sleep(1.0)  # every consultant connected and available
        for number in range(WARM_UP_CASES):
            await submit(http, run, -number - 1, crew, record=False)
        await asyncio.sleep(1.0)
        stop = asyncio.Event()
        prober = asyncio.create_task(health(http, run, stop))
        count = int(rate * seconds)
        cpu_before, database_before = server_cpu(), database_cpu_seconds()
        load_before, busy_before = cpu_seconds(os.getpid()), core_busy(LOAD_CPU)
        start = time.perf_counter()
        posts = []
        for number in range(count):
            # Open loop: cases arrive on schedule whether or not earlier ones are done.
            delay = start + number / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            posts.append(asyncio.create_task(submit(http, run, number, crew, record=True)))
        await asyncio.gather(*posts)
        await asyncio.sleep(2.0)  # the last offers arrive; a case never offered shows below
        stop.set()
        await prober
        run.server_cpu_seconds = server_cpu() - cpu_before
        run.database_cpu_seconds = database_cpu_seconds() - database_before
        (busy_after, ticks_after), (busy_then, ticks_then) = core_busy(LOAD_CPU), busy_before
        busy, ticks = busy_after - busy_then, ticks_after - ticks_then
        run.load_core_busy = busy / ticks if ticks else 0.0
        run.load_share = (cpu_seconds(os.getpid()) - load_before) / (time.perf_counter() - start)
        for task in sockets:
            task.cancel()
        await asyncio.gather(*sockets, return_exceptions=True)
        # Cancellations still on their way finish before the client closes under them.
        for outcome in await asyncio.gather(*run.cancels, return_exceptions=True):
            if isinstance(outcome, Exception):
                run.errors += 1
    return run, count


def centile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report(backend: str, rate: float, run: Run, count: int) -> None:
    latencies = [
        (run.offered_at[ref] - sent) * 1000
        for ref, sent in run.sent_at.items()
        if ref in run.offered_at
    ]
    missing = len(run.sent_at) - len(latencies)
    if not latencies:
        print(f"{backend:<10} {rate:>5.0f}/s  no offers arrived ({run.errors} errors)")
        return
    # From the crew's side: the request sent to the offer arriving (the POST's own round
    # trip included), so that work moved from after the response to before it shows.
    whole = [
        (run.offered_at[ref] - posted) * 1000
        for ref, posted in run.posted_at.items()
        if ref in run.offered_at
    ]
    health = statistics.median(run.health_ms)
    p50, p99, worst = centile(latencies, 0.5), centile(latencies, 0.99), max(latencies)
    print(
        f"{backend:<10} {rate:>5.0f}/s  cases {count:>5}  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms"
        f"  max {worst:7.1f} ms  healthz {health:5.2f} ms  p50/healthz {p50 / health:6.1f}x"
        f"  never offered {missing}  errors {run.errors}"
        f"  server CPU {run.server_cpu_seconds / count * 1000:5.1f} ms/case"
        f"  database CPU {run.database_cpu_seconds / count * 1000:5.1f} ms/case"
        f"  load generator {run.load_share:4.0%} of a core (its core {run.load_core_busy:4.0%}"
        " busy)"
        f"  | from the POST sent: p50 {centile(whole, 0.5):7.1f} ms"
        f"  p99 {centile(whole, 0.99):7.1f} ms"
    )


@contextlib.contextmanager
def routing_server(
    backend: str, url: str, *, name: str, module: str = "services.cli", **env: str
) -> Iterator[Server]:
    """The embedded process on a migrated `url`, set as this benchmark runs it (`module`:
    what serves it, `reach` itself unless an instrumented wrapper; `env`: more settings)."""
    migrate(url)
    port = free_port()
    settings = base_env(
        REACH_DATABASE_URL=url, REACH_CONSULT_LIMIT="10", REACH_ENVIRONMENT="dev", **env
    )
    command = [PYTHON, "-m", module, "serve", "--port", str(port)]
    with serve(command, env=settings, port=port, name=f"{name}-{backend}") as server:
        yield server


def bench_backend(backend: str, url: str, rates: list[float], seconds: float) -> None:
    with routing_server(backend, url, name="routing") as server:
        for rate in rates:
            run, count = asyncio.run(measure(server.base_url, rate, seconds, server.cpu))
            report(backend, rate, run, count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[10.0, 50.0])
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    pin_load_generator()
    print(machine_report())
    print(f"settings  {CONSULTANTS} consultants connected, {args.seconds:.0f} s per rate")
    measured = []
    for backend, url in databases("routing"):
        bench_backend(backend, url, args.rates, args.seconds)
        measured.append(backend)
    if "postgresql" not in measured:
        fail("PostgreSQL is needed for the second half")


if __name__ == "__main__":
    main()
