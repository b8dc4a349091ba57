"""Connections: thousands of websockets held by one reach process — consultants'
dashboards and crews' case streams — the server's memory per connection, and how long a
broadcast (a new case in every dashboard's queue) takes to reach all of them.

Memory is the server's resident set after the sockets are open, minus before, divided by
the sockets. Broadcast time is from the POST that changes the queue being sent to each
dashboard first seeing the new case in its queue (the broadcast can leave before the
POST's response); the p99 is over every dashboard and every change, and a dashboard that
never saw a change is counted apart. The clients behave as the dashboard does (a `ping`
every 25 s or so, or the server closes them as idle), share one process on another core,
and the figures include that process's own delay in reading thousands of sockets: an
upper bound. Sockets the server closed before the end are reported with its reasons.

    python -m bench.ws_connections [--consultants 2500] [--crews 2500] [--changes 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench.harness import (
    PYTHON,
    base_env,
    cpu_seconds,
    free_port,
    fresh_sqlite,
    full_passes,
    machine_report,
    migrate,
    pin_load_generator,
    put_on_rota,
    serve,
    token,
)
from services.consult_router.queue_feed import DEBOUNCE_SECONDS
from tests.factories import case_body

CONNECT_BATCH = 100
# Apart enough that each change is its own broadcast (the feed waits out a debounce).
CHANGE_SPACING_SECONDS = 1.0
# A crew's case every so often while the sockets open.
SUBMIT_EVERY_SECONDS = 0.5
SERVE_WAIT_SECONDS = 180.0
# Two of the streams' safety-net intervals (`REACH_STREAM_POLL_SECONDS`, 30 s).
QUIET_SECONDS = 60.0


def resident_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# The dashboard's own interval (services/shared/webui/live.js): the server closes a
# socket that says nothing for `websocket_idle_timeout_seconds`.
PING_SECONDS = 25.0


@dataclass
class Held:
    """One socket the load generator holds: when the server first served it (a
    dashboard's first queue, a crew's first event), when it first saw each case in a
    queue, and how it ended if the server closed it."""

    socket: ClientConnection
    served_at: float | None = None
    first_seen: dict[str, float] = field(default_factory=dict)
    closed: str | None = None


async def dashboard(base: str, index: int) -> ClientConnection:
    socket = await connect(base + "/v1/consultant/stream", max_queue=None, open_timeout=60)
    await socket.send(json.dumps({"type": "hello", "token": token("consultant", f"dr-{index}")}))
    await socket.send(json.dumps({"type": "status", "status": "away"}))
    return socket


async def crew_stream(base: str, case_id: str) -> ClientConnection:
    socket = await connect(f"{base}/v1/cases/{case_id}/stream", max_queue=None, open_timeout=60)
    await socket.send(json.dumps({"type": "hello", "token": token("paramedic", "bench-crew")}))
    return socket


async def hold(held: Held, *, reads_queue: bool) -> None:
    """Read everything the server sends and ping as the dashboard does, until closed."""

    async def ping() -> None:
        while True:
            await asyncio.sleep(PING_SECONDS * (0.8 + 0.4 * random.random()))
            await held.socket.send('{"type":"ping"}')

    pinger = asyncio.create_task(ping())
    try:
        async for raw in held.socket:
            if not reads_queue:
                held.served_at = held.served_at or time.perf_counter()
                continue
            message = json.loads(raw)
            if message["type"] == "queue":
                now = time.perf_counter()
                held.served_at = held.served_at or now
                for item in message["items"]:
                    held.first_seen.setdefault(item["case_id"], now)
    except ConnectionClosed as closed:
        held.closed = (
            f"{closed.rcvd.code} {closed.rcvd.reason}" if closed.rcvd else "no close frame"
        )
    else:
        rcvd = held.socket.close_code
        held.closed = f"{rcvd} {held.socket.close_reason}"
    finally:
        pinger.cancel()


async def open_all(factories: list[Callable[[], Awaitable[ClientConnection]]]) -> list[Held]:
    held: list[Held] = []
    for start in range(0, len(factories), CONNECT_BATCH):
        batch = factories[start : start + CONNECT_BATCH]
        held += [Held(s) for s in await asyncio.gather(*(make() for make in batch))]
    return held


@dataclass
class Submissions:
    """Crews' cases sent while the sockets open: what a reconnection storm costs them."""

    seconds: list[float] = field(default_factory=list)
    refused: Counter[int] = field(default_factory=Counter)


async def submit_meanwhile(
    http: httpx.AsyncClient, headers: dict[str, str], stop: asyncio.Event, into: Submissions
) -> None:
    number = 0
    while not stop.is_set():
        number += 1
        key = {"Idempotency-Key": f"conn-storm-{number}-{time.time_ns()}"}
        sent = time.perf_counter()
        response = await http.post("/v1/cases", json=case_body(), headers={**headers, **key})
        if response.status_code == 201:
            into.seconds.append(time.perf_counter() - sent)
            # Cancelled, so that the queue the changes broadcast is the same size
            # however many cases the storm let through.
            cancelled = await http.post(
                f"/v1/cases/{response.json()['id']}/cancel",
                json={"reason": "benchmark"},
                headers=headers,
            )
            cancelled.raise_for_status()
        else:
            into.refused[response.status_code] += 1
        await asyncio.sleep(SUBMIT_EVERY_SECONDS)


async def all_served(everyone: list[Held], *, since: float) -> str:
    """How long after the first connection every socket still open had been served."""
    deadline = time.perf_counter() + SERVE_WAIT_SECONDS
    while time.perf_counter() < deadline:
        if all(held.served_at or held.closed for held in everyone):
            last = max(held.served_at or since for held in everyone)
            return f"{last - since:.1f} s after the first connection"
        await asyncio.sleep(0.1)
    unserved = sum(1 for held in everyone if not (held.served_at or held.closed))
    return f"not within {SERVE_WAIT_SECONDS:.0f} s ({unserved} still waiting)"


async def run(server_url: str, pid: int, consultants: int, crews: int, changes: int) -> None:
    ws_base = server_url.replace("http://", "ws://")
    async with httpx.AsyncClient(base_url=server_url, timeout=60) as http:
        await put_on_rota(http, consultants)
        crew = {"Authorization": f"Bearer {token('paramedic', 'bench-crew')}"}
        response = await http.post(
            "/v1/cases",
            json=case_body(),
            headers={**crew, "Idempotency-Key": f"conn-{time.time_ns()}"},
        )
        response.raise_for_status()
        case_id = response.json()["id"]
        await asyncio.sleep(2.0)
        passes_at_start = await full_passes(http)
        before = resident_kib(pid)
        cpu_at_start = cpu_seconds(pid)
        connected_at = time.perf_counter()
        storm_over, submissions = asyncio.Event(), Submissions()
        submitter = asyncio.create_task(submit_meanwhile(http, crew, storm_over, submissions))
        boards = await open_all([partial(dashboard, ws_base, i) for i in range(consultants)])
        streams = await open_all([partial(crew_stream, ws_base, case_id)] * crews)
        connect_seconds = time.perf_counter() - connected_at
        holders = [asyncio.create_task(hold(h, reads_queue=True)) for h in boards]
        holders += [asyncio.create_task(hold(h, reads_queue=False)) for h in streams]
        everyone = boards + streams
        served_seconds = await all_served(everyone, since=connected_at)
        burst_cpu = cpu_seconds(pid) - cpu_at_start
        await asyncio.sleep(5.0)  # the process settled
        storm_over.set()
        await submitter
        after = resident_kib(pid)
        passes_before_changes = await full_passes(http)
        changed_at: dict[str, float] = {}
        for number in range(changes):
            headers = {**crew, "Idempotency-Key": f"conn-change-{number}-{time.time_ns()}"}
            # From the request being sent: the broadcast may leave before its response.
            sent = time.perf_counter()
            response = await http.post("/v1/cases", json=case_body(), headers=headers)
            response.raise_for_status()
            changed_at[response.json()["id"]] = sent
            await asyncio.sleep(CHANGE_SPACING_SECONDS)
        await asyncio.sleep(5.0)  # the last change's broadcast
        passes_after_changes = await full_passes(http)
        # What holding the sockets costs while nothing happens: the clients' pings and the
        # server's safety-net looks at the database.
        quiet_from = cpu_seconds(pid)
        await asyncio.sleep(QUIET_SECONDS)
        quiet_share = (cpu_seconds(pid) - quiet_from) / QUIET_SECONDS
        passes_at_end = await full_passes(http)
        for task in holders:  # first, so that our own closing is not counted as the server's
            task.cancel()
        for held in everyone:
            await held.socket.close()
    report(consultants, crews, boards, everyone, changed_at, connect_seconds, before, after)
    print(f"every open socket served (welcome and queue, or first event) {served_seconds}; "
          f"server CPU until then {burst_cpu:.1f} s")  # fmt: skip
    print(f"held for {QUIET_SECONDS:.0f} s with nothing happening: server CPU {quiet_share:.1%} "
          "of a core")  # fmt: skip
    # A full pass walks every open socket's objects and stops the process while it does.
    print(
        f"the collector's full passes while the sockets were open:"
        f" {(passes_at_end - passes_at_start).describe()};"
        f" during the changes: {(passes_after_changes - passes_before_changes).describe()}"
    )
    waits = sorted(submissions.seconds)
    if waits:
        print(
            f"crews' cases sent while the sockets opened: {len(waits)} accepted, p50 "
            f"{waits[len(waits) // 2] * 1000:.0f} ms, max {waits[-1] * 1000:.0f} ms; refused: "
            f"{dict(submissions.refused) or 'none'}"
        )


def report(
    consultants: int,
    crews: int,
    boards: list[Held],
    everyone: list[Held],
    changed_at: dict[str, float],
    connect_seconds: float,
    before: int,
    after: int,
) -> None:
    opened = len(everyone)
    per_connection = (after - before) / max(opened, 1)
    print(
        f"{opened} sockets ({consultants} dashboards, {crews} crew streams) opened in "
        f"{connect_seconds:.1f} s; server RSS {before / 1024:.0f} -> {after / 1024:.0f} MiB, "
        f"{per_connection:.1f} KiB per connection"
    )
    delays: list[float] = []
    missed = 0
    for held in boards:
        for case, sent in changed_at.items():
            if case in held.first_seen:
                delays.append((held.first_seen[case] - sent) * 1000)
            else:
                missed += 1
    if delays:
        delays.sort()
        p50 = delays[len(delays) // 2]
        p99 = delays[min(len(delays) - 1, int(0.99 * len(delays)))]
        print(
            f"broadcast to {consultants} dashboards x {len(changed_at)} changes: p50 {p50:.0f} ms, "
            f"p99 {p99:.0f} ms, max {delays[-1]:.0f} ms (includes the "
            f"{DEBOUNCE_SECONDS * 1000:.0f} ms debounce); {missed} of "
            f"{len(boards) * len(changed_at)} never arrived"
        )
    closed_by_server = Counter(held.closed for held in everyone if held.closed)
    for reason, count in closed_by_server.most_common():
        print(f"  closed by the server before the end: {count} ({reason})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--consultants", type=int, default=2500)
    parser.add_argument("--crews", type=int, default=2500)
    parser.add_argument("--changes", type=int, default=10)
    args = parser.parse_args()
    pin_load_generator()
    print(machine_report())
    url = fresh_sqlite("connections")
    migrate(url)
    port = free_port()
    env = base_env(REACH_DATABASE_URL=url, REACH_ENVIRONMENT="dev")
    command = [PYTHON, "-m", "services.cli", "serve", "--port", str(port)]
    with serve(command, env=env, port=port, name="connections") as server:
        asyncio.run(
            run(server.base_url, server.process.pid, args.consultants, args.crews, args.changes)
        )


if __name__ == "__main__":
    main()
