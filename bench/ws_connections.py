"""Connections: thousands of websockets held by one reach process — consultants'
dashboards and crews' case streams — the server's memory per connection, and how long a
broadcast (a new case in every dashboard's queue) takes to reach all of them.

Memory is the server's resident set after the sockets are open, minus before, divided by
the sockets. Broadcast time is from the POST that changes the queue being sent to each
dashboard receiving the new queue (the broadcast can leave before the POST's response); the p99 is over every dashboard and every change. The
clients share one process on another core: the figures include its own delay in reading
thousands of sockets, so they are an upper bound.

    python -m bench.ws_connections [--consultants 2500] [--crews 2500] [--changes 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from websockets.asyncio.client import ClientConnection, connect

from bench.harness import (
    BENCH_SECRET,
    PYTHON,
    base_env,
    free_port,
    fresh_sqlite,
    machine_report,
    migrate,
    serve,
)
from services.shared.auth import mint_token
from services.shared.clock import SystemClock
from tests.factories import case_body

CONNECT_BATCH = 100


def token(role: str, sub: str) -> str:
    return mint_token(BENCH_SECRET, sub=sub, role=role, name=sub, clock=SystemClock())


def resident_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class Arrivals:
    changed_at: float = 0.0
    delays_ms: list[float] = field(default_factory=list)
    expected: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


async def dashboard(base: str, index: int) -> ClientConnection:
    socket = await connect(base + "/v1/consultant/stream", max_queue=None, open_timeout=60)
    await socket.send(json.dumps({"type": "hello", "token": token("consultant", f"dr-{index}")}))
    await socket.send(json.dumps({"type": "status", "status": "away"}))
    return socket


async def listen(socket: ClientConnection, arrivals: Arrivals) -> None:
    async for raw in socket:
        if arrivals.changed_at and json.loads(raw)["type"] == "queue":
            arrivals.delays_ms.append((time.perf_counter() - arrivals.changed_at) * 1000)
            if len(arrivals.delays_ms) >= arrivals.expected:
                arrivals.done.set()


async def crew_stream(base: str, case_id: str) -> ClientConnection:
    socket = await connect(f"{base}/v1/cases/{case_id}/stream", max_queue=None, open_timeout=60)
    await socket.send(json.dumps({"type": "hello", "token": token("paramedic", "bench-crew")}))
    return socket


async def run(server_url: str, pid: int, consultants: int, crews: int, changes: int) -> None:
    ws_base = server_url.replace("http://", "ws://")
    arrivals = Arrivals()
    async with httpx.AsyncClient(base_url=server_url, timeout=60) as http:
        admin = {"Authorization": f"Bearer {token('admin', 'bench-admin')}"}
        for index in range(consultants):
            response = await http.put(
                f"/v1/consultants/dr-{index}",
                json={"name": f"dr-{index}", "grade": "consultant", "specialties": ["frailty"]},
                headers=admin,
            )
            response.raise_for_status()
        crew = {"Authorization": f"Bearer {token('paramedic', 'bench-crew')}"}
        response = await http.post(
            "/v1/cases",
            json=case_body(),
            headers={**crew, "Idempotency-Key": f"conn-{time.time_ns()}"},
        )
        response.raise_for_status()
        case_id = response.json()["id"]
        await asyncio.sleep(2.0)
        before = resident_kib(pid)
        sockets: list[ClientConnection] = []
        for start in range(0, consultants, CONNECT_BATCH):
            batch = range(start, min(start + CONNECT_BATCH, consultants))
            sockets += await asyncio.gather(*(dashboard(ws_base, i) for i in batch))
        for start in range(0, crews, CONNECT_BATCH):
            count = min(CONNECT_BATCH, crews - start)
            sockets += await asyncio.gather(*(crew_stream(ws_base, case_id) for _ in range(count)))
        listeners = [asyncio.create_task(listen(s, arrivals)) for s in sockets[:consultants]]
        await asyncio.sleep(5.0)  # welcomes delivered, the process settled
        after = resident_kib(pid)
        opened = len(sockets)
        for number in range(changes):
            arrivals.expected = len(arrivals.delays_ms) + consultants
            arrivals.done.clear()
            headers = {**crew, "Idempotency-Key": f"conn-change-{number}-{time.time_ns()}"}
            # From the request being sent: the broadcast may leave before its response.
            arrivals.changed_at = time.perf_counter()
            response = await http.post("/v1/cases", json=case_body(), headers=headers)
            response.raise_for_status()
            try:
                await asyncio.wait_for(arrivals.done.wait(), 30)
            except TimeoutError:
                print(f"  change {number}: only {len(arrivals.delays_ms)} of {arrivals.expected}")
            await asyncio.sleep(0.5)
        for task in listeners:
            task.cancel()
        for socket in sockets:
            await socket.close()
    delays = sorted(arrivals.delays_ms)
    per_connection = (after - before) / max(opened, 1)
    print(
        f"{opened} sockets ({consultants} dashboards, {crews} crew streams)  server RSS "
        f"{before / 1024:.0f} -> {after / 1024:.0f} MiB, {per_connection:.1f} KiB per connection"
    )
    if delays:
        p50 = delays[len(delays) // 2]
        p99 = delays[min(len(delays) - 1, int(0.99 * len(delays)))]
        print(
            f"broadcast to {consultants} dashboards x {changes} changes: p50 {p50:.0f} ms, "
            f"p99 {p99:.0f} ms, max {delays[-1]:.0f} ms (includes the 200 ms debounce)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--consultants", type=int, default=2500)
    parser.add_argument("--crews", type=int, default=2500)
    parser.add_argument("--changes", type=int, default=10)
    args = parser.parse_args()
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
