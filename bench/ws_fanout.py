"""Websocket fan-out: server CPU per message delivered when a change is broadcast to N
connected dashboards, for reach (a case submitted: every consultant's dashboard gets the
new queue) against a bare `websockets` broadcast server sending the same bytes, measured
side by side in one run.

Each side runs twice on a fresh server: without clients, then with N (for reach, the same
N consultants are on the rota both times). The difference in
server CPU, divided by the messages the clients received, is the cost of delivering one
message; the changes themselves (storing a case) cost the same in both runs and cancel.

Target: reach <= 1.5x the baseline per delivered message.

At a few hundred dashboards the messages' CPU is a few tenths of a second against a
second or two of the changes' own work, and the ratio swings with the noise; 1,600 is
the steady figure.

    python -m bench.ws_fanout [--clients 400 1600] [--changes 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass

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
    pin_load_generator,
    serve,
)
from services.shared.auth import mint_token
from services.shared.clock import SystemClock
from tests.factories import case_body

# Longer than the dashboards' queue debounce (0.2 s): each change is its own broadcast.
CHANGE_INTERVAL_SECONDS = 0.4


def token(role: str, sub: str) -> str:
    return mint_token(BENCH_SECRET, sub=sub, role=role, name=sub, clock=SystemClock())


@dataclass
class Received:
    messages: int = 0
    total_bytes: int = 0
    sample: str = ""


async def listen(socket: ClientConnection, received: Received, kind: str | None) -> None:
    async for raw in socket:
        if kind is None or json.loads(raw)["type"] == kind:
            received.messages += 1
            received.total_bytes += len(raw)
            received.sample = str(raw)


async def reach_run(clients: int, changes: int, *, connect_them: bool) -> tuple[float, Received]:
    """Server CPU seconds and messages received for `changes` cases, with `clients`
    consultants on the rota and, if `connect_them`, a dashboard open for each."""
    url = fresh_sqlite(f"fanout-{clients}")
    migrate(url)
    port = free_port()
    env = base_env(REACH_DATABASE_URL=url, REACH_ENVIRONMENT="dev")
    command = [PYTHON, "-m", "services.cli", "serve", "--port", str(port)]
    received = Received()
    with serve(command, env=env, port=port, name=f"fanout-reach-{clients}") as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
            admin = {"Authorization": f"Bearer {token('admin', 'bench-admin')}"}
            for index in range(clients):
                response = await http.put(
                    f"/v1/consultants/dr-{index}",
                    json={"name": f"dr-{index}", "grade": "consultant", "specialties": ["frailty"]},
                    headers=admin,
                )
                response.raise_for_status()
            sockets = []
            for index in range(clients if connect_them else 0):
                socket = await connect(
                    server.base_url.replace("http://", "ws://") + "/v1/consultant/stream",
                    max_queue=None,
                )
                await socket.send(
                    json.dumps({"type": "hello", "token": token("consultant", f"dr-{index}")})
                )
                # Away: the case is broadcast in the queue, never offered.
                await socket.send(json.dumps({"type": "status", "status": "away"}))
                # Measure nothing of the set-up: this dashboard is open and settled once
                # its status is confirmed.
                while json.loads(await socket.recv())["type"] != "status":
                    pass
                sockets.append(socket)
            listeners = [asyncio.create_task(listen(s, received, "queue")) for s in sockets]
            await asyncio.sleep(1.5)
            received.messages = received.total_bytes = 0
            crew = {"Authorization": f"Bearer {token('paramedic', 'bench-crew')}"}
            before = server.cpu()
            for number in range(changes):
                headers = {**crew, "Idempotency-Key": f"fanout-{clients}-{number}-{time.time_ns()}"}
                response = await http.post("/v1/cases", json=case_body(), headers=headers)
                response.raise_for_status()
                await asyncio.sleep(CHANGE_INTERVAL_SECONDS)
            await asyncio.sleep(1.0)
            used = server.cpu() - before
            for task in listeners:
                task.cancel()
            for socket in sockets:
                await socket.close()
    return used, received


async def baseline_run(clients: int, changes: int, payload: str) -> tuple[float, Received]:
    port = free_port()
    command = [PYTHON, "-m", "bench.baseline_broadcast", str(port)]
    received = Received()
    with serve(
        command, env=base_env(), port=port, name=f"fanout-baseline-{clients}", probe="ws"
    ) as server:
        base = f"ws://127.0.0.1:{port}"
        sockets = [await connect(base + "/", max_queue=None) for _ in range(clients)]
        listeners = [asyncio.create_task(listen(s, received, None)) for s in sockets]
        async with connect(base + "/control") as control:
            await asyncio.sleep(1.5)
            before = server.cpu()
            for _ in range(changes):
                await control.send(payload)
                await control.recv()
                await asyncio.sleep(CHANGE_INTERVAL_SECONDS)
            await asyncio.sleep(1.0)
            used = server.cpu() - before
        for task in listeners:
            task.cancel()
        for socket in sockets:
            await socket.close()
    return used, received


def per_message_us(with_clients: tuple[float, Received], without: tuple[float, Received]) -> float:
    cpu, received = with_clients
    if received.messages == 0:
        return float("nan")
    return (cpu - without[0]) / received.messages * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[400, 1600])
    parser.add_argument("--changes", type=int, default=40)
    args = parser.parse_args()
    pin_load_generator()
    print(machine_report())
    print(f"settings  {args.changes} changes per run, {CHANGE_INTERVAL_SECONDS}s apart")
    for clients in args.clients:
        # The same rota in both runs: only the open dashboards differ.
        reach_idle = asyncio.run(reach_run(clients, args.changes, connect_them=False))
        reach = asyncio.run(reach_run(clients, args.changes, connect_them=True))
        size = reach[1].total_bytes // max(reach[1].messages, 1)
        # The baseline sends the very bytes reach sent (the last queue message, so the
        # largest): the same compression work, a slightly harder task than reach's.
        payload = reach[1].sample
        base_idle = asyncio.run(baseline_run(0, args.changes, payload))
        base = asyncio.run(baseline_run(clients, args.changes, payload))
        reach_us, base_us = per_message_us(reach, reach_idle), per_message_us(base, base_idle)
        print(
            f"{clients:>5} dashboards  messages reach {reach[1].messages:>6} baseline {base[1].messages:>6}"
            f"  ~{size} B each  CPU/message reach {reach_us:8.1f} us  baseline {base_us:6.1f} us"
            f"  ratio {reach_us / base_us:5.2f}x"
        )


if __name__ == "__main__":
    main()
