"""Websocket fan-out: server CPU per message delivered when a change is broadcast to N
connected dashboards, for reach (a case submitted: every consultant's dashboard gets the
new queue) against a bare `websockets` broadcast server sending the same bytes, measured
side by side in one run.

Each side runs twice on a fresh server: without clients, then with N (for reach, the same
N consultants are on the rota both times). Each run measures two windows of the same
length one after the other: a quiet one (nothing changes) and a busy one (the changes,
one every 0.4 s). The busy window's CPU less the quiet one's is what the changes cost;
with N clients that includes their messages, without clients it does not (storing a
case costs the same in both runs). The difference of the two, divided by the messages
the clients received, is the cost of delivering one message.

Why the quiet window: holding the sockets open costs CPU whether or not anything is
sent (the server and each client ping the other every 20 s, uvicorn's and `websockets`'
default, and reach keeps presence), and how much of that falls in one window depends on
when the sockets were opened: reach's 1,600 dashboards take half a minute to say hello,
so their pings are spread evenly, while the baseline's bare sockets open within seconds
and ping in one burst every 20 s, which a window may or may not hold. Each window lasts
exactly one ping period, so each holds one ping each way for every socket whatever its
phase, and the subtraction leaves the messages alone. The figure counted the old way
(the busy window alone, less the run without clients) is printed beside it.

Target: reach <= 1.5x the baseline per delivered message. The machine's speed moves
between reach's runs and the baseline's, minutes apart (one build's ratio at 1,600 was
1.01x, 2.49x and 1.57x in three runs in a row on one VM), so the script runs several
rounds, each reach then the baseline, and gives the median round's ratio and the range.

At a few hundred dashboards the messages' CPU is a few tenths of a second against a
second or two of the changes' own work, and the ratio swings with the noise; 1,600 is
the steady figure.

Part of reach's figure is the garbage collector's first full pass after the dashboards
connected: their sockets' objects (a few hundred each) are walked once they have lived
long enough, and the busy window, which allocates, is where that pass falls. It is
printed apart, from reach's `reach_gc_pause_seconds` read before and after each window
(outside the CPU it measures): how many full passes the busy window held, how long they
took, and reach's figure without them beside the figure with them. A pass is timed on
the wall clock; with the server alone on its core, that is the CPU it took.

With `--asgi`, each round also runs a bare ASGI app on uvicorn, served as reach is
(`bench/asgi_broadcast.py`), sending the same bytes: what the server stack costs beside
the bare `websockets` server, so that reach's ratio splits into the stack's part and
reach's own.

    python -m bench.ws_fanout [--clients 400 1600] [--changes 40] [--rounds 3] [--asgi]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import httpx
from websockets.asyncio.client import ClientConnection, connect

from bench.harness import (
    BENCH_SECRET,
    PYTHON,
    FullPasses,
    Server,
    base_env,
    free_port,
    fresh_sqlite,
    full_passes,
    machine_report,
    migrate,
    pin_load_generator,
    serve,
)
from services.shared.auth import mint_token
from services.shared.clock import SystemClock
from tests.factories import case_body

Hook = Callable[[], Awaitable[None]]

# Longer than the dashboards' queue debounce (0.2 s): each change is its own broadcast.
CHANGE_INTERVAL_SECONDS = 0.4
# One keepalive period (uvicorn's `ws_ping_interval` and `websockets`' `ping_interval`,
# both 20 s by default): a window this long holds one ping each way for every socket.
WINDOW_SECONDS = 20.0


def token(role: str, sub: str) -> str:
    return mint_token(BENCH_SECRET, sub=sub, role=role, name=sub, clock=SystemClock())


@dataclass
class Received:
    messages: int = 0
    total_bytes: int = 0
    sample: str = ""


async def no_full_passes() -> FullPasses:
    """For a server that does not report its collector (the baseline)."""
    return FullPasses()


@dataclass
class Windows:
    """Server CPU seconds in the quiet window and in the busy one, and what the clients
    received in the busy one; the full collections each window held."""

    quiet: float
    busy: float
    received: Received
    quiet_passes: FullPasses = field(default_factory=FullPasses)
    busy_passes: FullPasses = field(default_factory=FullPasses)


async def nothing() -> None:
    pass


async def measure_windows(
    cpu: Callable[[], float],
    received: Received,
    changes: int,
    change: Callable[[int], Awaitable[None]],
    read_passes: Callable[[], Awaitable[FullPasses]] = no_full_passes,
    busy_begins: Hook = nothing,
    busy_ends: Hook = nothing,
) -> Windows:
    """The quiet window, then the busy one, each `WINDOW_SECONDS` long. The collector is
    read before each window's CPU and after it, so reading it is not measured;
    `busy_begins` and `busy_ends` are called just outside the busy window's CPU."""
    loop = asyncio.get_running_loop()
    passes_before = await read_passes()
    before = cpu()
    await asyncio.sleep(WINDOW_SECONDS)
    quiet = cpu() - before
    passes_between = await read_passes()
    received.messages = received.total_bytes = 0
    await busy_begins()
    started, before = loop.time(), cpu()
    for number in range(changes):
        await change(number)
        await asyncio.sleep(CHANGE_INTERVAL_SECONDS)
    await asyncio.sleep(max(0.0, started + WINDOW_SECONDS - loop.time()))
    busy = cpu() - before
    await busy_ends()
    passes_after = await read_passes()
    return Windows(
        quiet, busy, received, passes_between - passes_before, passes_after - passes_between
    )


async def listen(socket: ClientConnection, received: Received, kind: str | None) -> None:
    async for raw in socket:
        if kind is None or json.loads(raw)["type"] == kind:
            received.messages += 1
            received.total_bytes += len(raw)
            received.sample = str(raw)


async def reach_run(
    clients: int,
    changes: int,
    *,
    connect_them: bool,
    server_module: str = "services.cli",
    env: dict[str, str] | None = None,
    busy_hooks: Callable[[Server], tuple[Hook, Hook]] | None = None,
) -> Windows:
    """The windows of `changes` cases, with `clients` consultants on the rota and, if
    `connect_them`, a dashboard open for each; reach served by `server_module` (`reach`'s
    CLI, or a benchmark's wrapper of it) with `env` added, and `busy_hooks`, if given,
    making what is called as the busy window begins and ends for that server."""
    url = fresh_sqlite(f"fanout-{clients}")
    migrate(url)
    port = free_port()
    env = base_env(REACH_DATABASE_URL=url, REACH_ENVIRONMENT="dev", **(env or {}))
    command = [PYTHON, "-m", server_module, "serve", "--port", str(port)]
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
            crew = {"Authorization": f"Bearer {token('paramedic', 'bench-crew')}"}

            async def submit(number: int) -> None:
                headers = {**crew, "Idempotency-Key": f"fanout-{clients}-{number}-{time.time_ns()}"}
                response = await http.post("/v1/cases", json=case_body(), headers=headers)
                response.raise_for_status()

            begins, ends = busy_hooks(server) if busy_hooks is not None else (nothing, nothing)
            windows = await measure_windows(
                server.cpu, received, changes, submit, partial(full_passes, http), begins, ends
            )
            for task in listeners:
                task.cancel()
            for socket in sockets:
                await socket.close()
    return windows


async def baseline_run(
    clients: int, changes: int, payload: str, server_module: str = "bench.baseline_broadcast"
) -> Windows:
    """The windows of a bare broadcast server (`server_module`) sending `payload` to
    `clients` sockets at each change."""
    port = free_port()
    command = [PYTHON, "-m", server_module, str(port)]
    received = Received()
    name = f"fanout-{server_module.rpartition('.')[2]}-{clients}"
    with serve(command, env=base_env(), port=port, name=name, probe="ws") as server:
        base = f"ws://127.0.0.1:{port}"
        sockets = [await connect(base + "/", max_queue=None) for _ in range(clients)]
        listeners = [asyncio.create_task(listen(s, received, None)) for s in sockets]
        async with connect(base + "/control") as control:
            await asyncio.sleep(1.5)

            async def broadcast(_number: int) -> None:
                await control.send(payload)
                await control.recv()

            windows = await measure_windows(server.cpu, received, changes, broadcast)
        for task in listeners:
            task.cancel()
        for socket in sockets:
            await socket.close()
    return windows


def per_message_us(with_clients: Windows, without: Windows, *, net: bool = True) -> float:
    """CPU a delivered message: what the changes cost with the clients less what they cost
    without, the quiet windows subtracted (`net`) or not (the busy windows alone)."""
    messages = with_clients.received.messages
    if messages == 0:
        return float("nan")
    held = with_clients.quiet - without.quiet if net else 0.0
    return (with_clients.busy - without.busy - held) / messages * 1e6


@dataclass
class Round:
    """One round at one size: reach's and the baseline's CPU a delivered message."""

    reach_us: float
    base_us: float
    gross_reach_us: float
    gross_base_us: float
    # reach's full collections in its busy window with the dashboards, less those in
    # its busy window without them, and reach's figure without them.
    reach_passes: FullPasses
    reach_without_passes_us: float
    # A bare ASGI app's broadcast on uvicorn served as reach is (`--asgi`), if measured.
    asgi_us: float | None = None

    @property
    def ratio(self) -> float:
        return self.reach_us / self.base_us


def one_round(clients: int, changes: int, *, asgi: bool = False) -> Round:
    """Reach's two runs, then the baseline's two (and the bare ASGI app's two, if `asgi`),
    each on a fresh server; printed."""
    # The same rota in both runs: only the open dashboards differ.
    reach_idle = asyncio.run(reach_run(clients, changes, connect_them=False))
    reach = asyncio.run(reach_run(clients, changes, connect_them=True))
    size = reach.received.total_bytes // max(reach.received.messages, 1)
    # The baseline sends the very bytes reach sent (the last queue message, so the
    # largest): the same compression work, a slightly harder task than reach's.
    payload = reach.received.sample
    base_idle = asyncio.run(baseline_run(0, changes, payload))
    base = asyncio.run(baseline_run(clients, changes, payload))
    asgi_us = None
    if asgi:
        asgi_idle = asyncio.run(baseline_run(0, changes, payload, "bench.asgi_broadcast"))
        asgi_busy = asyncio.run(baseline_run(clients, changes, payload, "bench.asgi_broadcast"))
        asgi_us = per_message_us(asgi_busy, asgi_idle)
    reach_us = per_message_us(reach, reach_idle)
    # As the CPU is counted: the busy windows' passes, less those of the quiet windows
    # (already taken off as the cost of holding the sockets).
    passes = (reach.busy_passes - reach_idle.busy_passes) - (
        reach.quiet_passes - reach_idle.quiet_passes
    )
    measured = Round(
        reach_us=reach_us,
        base_us=per_message_us(base, base_idle),
        gross_reach_us=per_message_us(reach, reach_idle, net=False),
        gross_base_us=per_message_us(base, base_idle, net=False),
        reach_passes=passes,
        reach_without_passes_us=reach_us - passes.seconds / max(reach.received.messages, 1) * 1e6,
        asgi_us=asgi_us,
    )
    print(
        f"{clients:>5} dashboards  messages reach {reach.received.messages:>6}"
        f" baseline {base.received.messages:>6}  ~{size} B each"
        f"  CPU/message reach {measured.reach_us:8.1f} us  baseline {measured.base_us:6.1f} us"
        f"  ratio {measured.ratio:5.2f}x"
        f"  | holding {clients} sockets for {WINDOW_SECONDS:.0f} s: reach"
        f" {(reach.quiet - reach_idle.quiet) * 1e3:.0f} ms, baseline"
        f" {(base.quiet - base_idle.quiet) * 1e3:.0f} ms"
        f"  | not subtracted: reach {measured.gross_reach_us:.1f} us, baseline"
        f" {measured.gross_base_us:.1f} us, ratio"
        f" {measured.gross_reach_us / measured.gross_base_us:.2f}x"
        f"  | reach's full collections in the busy window: {passes.count}"
        f" ({passes.seconds * 1e3:.0f} ms); without them {measured.reach_without_passes_us:.1f} us,"
        f" ratio {measured.reach_without_passes_us / measured.base_us:.2f}x"
        + (
            ""
            if asgi_us is None
            else f"  | a bare ASGI app on uvicorn {asgi_us:.1f} us, {asgi_us / measured.base_us:.2f}x"
            f" the baseline; reach {measured.reach_us / asgi_us:.2f}x it"
        ),
        flush=True,
    )
    return measured


def summarise(clients: int, rounds: list[Round]) -> None:
    """The median round's ratio, and the range: one round's ratio moves with the
    machine's speed between reach's runs and the baseline's, minutes apart."""
    ratios = sorted(r.ratio for r in rounds)
    print(
        f"{clients:>5} dashboards  median of {len(rounds)} rounds: ratio"
        f" {statistics.median(ratios):.2f}x (range {ratios[0]:.2f}-{ratios[-1]:.2f}x);"
        f" reach {statistics.median(r.reach_us for r in rounds):.1f} us, baseline"
        f" {statistics.median(r.base_us for r in rounds):.1f} us a message (medians);"
        f" reach without its full collections: ratio"
        f" {statistics.median(r.reach_without_passes_us / r.base_us for r in rounds):.2f}x"
    )
    asgi = [r.asgi_us / r.base_us for r in rounds if r.asgi_us is not None]
    if asgi:
        print(
            f"{clients:>5} dashboards  a bare ASGI app on uvicorn, median of {len(asgi)}"
            f" rounds: {statistics.median(asgi):.2f}x the baseline"
            f" (range {min(asgi):.2f}-{max(asgi):.2f}x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[400, 1600])
    parser.add_argument("--changes", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--asgi",
        action="store_true",
        help="also measure a bare ASGI app's broadcast on uvicorn, served as reach is",
    )
    args = parser.parse_args()
    # The changes, and a second for the last broadcast to arrive, fit in the busy window;
    # said before any server starts, not after 1,600 dashboards have connected.
    most = int((WINDOW_SECONDS - 1.0) / CHANGE_INTERVAL_SECONDS)
    if not 0 < args.changes <= most:
        parser.error(f"--changes must be 1 to {most}: the busy window lasts {WINDOW_SECONDS:.0f} s")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    pin_load_generator()
    print(machine_report())
    print(
        f"settings  {args.changes} changes per run, {CHANGE_INTERVAL_SECONDS}s apart;"
        f" quiet and busy windows of {WINDOW_SECONDS:.0f} s each; {args.rounds} rounds"
    )
    for clients in args.clients:
        rounds = [one_round(clients, args.changes, asgi=args.asgi) for _ in range(args.rounds)]
        if len(rounds) > 1:
            summarise(clients, rounds)


if __name__ == "__main__":
    main()
