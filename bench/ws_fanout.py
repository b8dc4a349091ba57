"""Websocket fan-out: server CPU per message delivered when a change is broadcast to N
connected dashboards, for reach (a case submitted: every consultant's dashboard gets the
new queue) against a bare `websockets` broadcast server sending the same bytes, measured
side by side in one run.

Each round serves four processes at once, each on the servers' core: reach without
dashboards and reach with N (the same N consultants on the rota in both, so only the
open dashboards differ), the baseline without clients and with N. All four are measured
over the same two windows of the same length, one after the other: a quiet one (nothing
changes) and a busy one (the changes, one every 0.4 s on each server), every server's
CPU read back to back at each window's start and end. The busy window's CPU less the
quiet one's is what the changes cost; with N clients that includes their messages,
without clients it does not (storing a case costs the same in both). The difference of
the two, divided by the messages the clients received, is the cost of delivering one
message.

Why side by side: the machine's speed drifts over minutes. When each server had a run
of its own, one after another, the baseline alone moved from 9.4 to 13.8 us a message
between consecutive rounds and one build's ratio from 1.27x to 1.73x: the drift between
runs minutes apart was larger than the differences measured. Over the same windows a drift
slows every server alike. In the busy window the servers take turns within each 0.4 s
period (`OFFSET_SECONDS`), so that no two bursts share the core at once and one
server's burst does not wait behind, or cache-thrash with, another's.

The bare servers send reach's very bytes: at each change, the queue message reach's
dashboards received for that same change (the queue grows by one case a change, so the
messages grow through the window as reach's do). Each bare server's slot comes after
reach's broadcast of that change.

Why the quiet window: holding the sockets open costs CPU whether or not anything is
sent (the server and each client ping the other every 20 s, uvicorn's and `websockets`'
default, and reach keeps presence), and how much of that falls in one window depends on
when the sockets were opened: reach's 1,600 dashboards take half a minute to say hello,
so their pings are spread evenly, while the baseline's bare sockets open within seconds
and ping in one burst every 20 s, which a window may or may not hold. Each window lasts
exactly one ping period, so each holds one ping each way for every socket whatever its
phase, and the subtraction leaves the messages alone. The figure counted the old way
(the busy window alone, less the server without clients) is printed beside it.

Target: reach <= 1.5x the baseline per delivered message. The script runs several
rounds and gives the median round's ratio and the range (what noise is left).

At a few hundred dashboards the messages' CPU is a few tenths of a second against a
second or two of the changes' own work, and the ratio swings with the noise; 1,600 is
the steady figure.

Given two sizes or more, the script splits reach's ratio into its two parts, from the
median rounds of the fewest and the most dashboards: what a socket's send costs beside
the baseline's (its ratio at any number of dashboards), and what reach does once a
change for all of them (reading and encoding the queue), in the baseline's messages.
The ratio at N dashboards is then the first plus the second divided by N, and the
smallest N within the target follows. Two sizes' noise moves the split a good deal;
it says which part a change to reach would have to shrink, not a figure to the unit.

Part of reach's figure is the garbage collector's first full pass after the dashboards
connected: their sockets' objects (a few hundred each) are walked once they have lived
long enough, and the busy window, which allocates, is where that pass falls. It is
printed apart, from reach's `reach_gc_pause_seconds` read before and after each window
(outside the CPU it measures): how many full passes the busy window held, how long they
took, and reach's figure without them beside the figure with them. A pass is timed on
the wall clock: that is the CPU it took unless it ran into another server's turn on the
core, when it took less.

With `--asgi`, each round also serves a bare ASGI app on uvicorn, with clients and
without, served as reach is (`bench/asgi_broadcast.py`), sending the same bytes: what
the server stack costs beside the bare `websockets` server, so that reach's ratio splits
into the stack's part and reach's own.

The load generator, on its own core, holds every server's clients at once (2N sockets,
3N with `--asgi`). How busy it was in the busy window and how late the latest change
began are printed: near 100%, or changes tens of ms late, and it set the pace and the
servers' turns ran into each other.

    python -m bench.ws_fanout [--clients 400 1600] [--changes 40] [--rounds 3] [--asgi]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import httpx
from websockets.asyncio.client import ClientConnection, connect

from bench.harness import (
    PYTHON,
    FullPasses,
    Server,
    base_env,
    fail,
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
from tests.factories import case_body

Hook = Callable[[], Awaitable[None]]

# The target: reach's CPU a delivered message at most this many times the baseline's
# (the summary of bench/RESULTS.md).
TARGET_RATIO = 1.5

# Longer than the dashboards' queue debounce (0.2 s): each change is its own broadcast.
CHANGE_INTERVAL_SECONDS = 0.4
# One keepalive period (uvicorn's `ws_ping_interval` and `websockets`' `ping_interval`,
# both 20 s by default): a window this long holds one ping each way for every socket.
WINDOW_SECONDS = 20.0

# The servers of a round, by name.
REACH, REACH_IDLE = "reach", "reach without dashboards"
BASELINE, BASELINE_IDLE = "baseline", "baseline without clients"
ASGI, ASGI_IDLE = "asgi", "asgi without clients"
# When each server's change n comes: n periods of `CHANGE_INTERVAL_SECONDS`, and this,
# after the busy window begins. The servers take turns on their core within a period:
#   0.00  reach: the case's POST (a few ms); its queue feed broadcasts 0.2 s later
#   0.05  reach without dashboards: the case's POST (its feed, with no dashboard to
#         tell, does nothing 0.2 s later)
#   0.10  the ASGI app: the broadcast of change n-1 (~6 ms at 400 clients, ~4 times that
#         at 1,600), then 0.15 the app without clients
#   0.20  reach's feed, the debounce after the POST: the queue read and sent (~7-10 ms
#         at 400 dashboards, ~30-40 ms at 1,600), its messages received from ~0.21
#   0.30  the baseline: the same bytes, then 0.35 the baseline without clients
# The bare servers send the message reach sent for the same change, so each comes after
# reach's broadcast: the baseline in the same period, the ASGI app in the next (0.5 s).
# The baseline comes 0.1 s after reach's broadcast, not at once: the load generator,
# still taking in reach's messages, would send the baseline's change late, towards the
# next slot (at 0.25, with every message parsed, it was up to 55 ms late at 400
# dashboards; at 1,600 it has 4 times the messages to take in). The servers without
# clients, whose bursts are small, come just after their pair's.
OFFSET_SECONDS = {
    REACH: 0.00,
    REACH_IDLE: 0.05,
    ASGI: 0.50,
    ASGI_IDLE: 0.55,
    BASELINE: 0.30,
    BASELINE_IDLE: 0.35,
}
# reach's message of a change arrives about 0.21 s after its POST; a bare server waits
# this long past its slot for it before sending the message before it instead.
PAYLOAD_WAIT_SECONDS = 0.05
# A dashboard, or a bare server's client, is settled this long after the last connects.
SETTLE_SECONDS = 1.5


@dataclass
class Received:
    messages: int = 0
    total_bytes: int = 0
    sample: str = ""
    # Set at every message: for a wait for one (cleared by the waiter).
    news: asyncio.Event = field(default_factory=asyncio.Event)


async def no_full_passes() -> FullPasses:
    """For a server that does not report its collector (the baseline)."""
    return FullPasses()


async def nothing() -> None:
    pass


@dataclass
class Side:
    """One server of a round with its clients set up: what it does at each change, when
    in the period (`OFFSET_SECONDS`), and what its clients receive."""

    name: str
    server: Server
    received: Received
    change: Callable[[int], Awaitable[None]]
    offset: float = 0.0
    read_passes: Callable[[], Awaitable[FullPasses]] = no_full_passes
    busy_begins: Hook = nothing
    busy_ends: Hook = nothing


@dataclass
class Windows:
    """Server CPU seconds in the quiet window and in the busy one, and what the clients
    received in the busy one; the full collections each window held; how late the
    latest change began after its slot."""

    quiet: float
    busy: float
    received: Received
    quiet_passes: FullPasses = field(default_factory=FullPasses)
    busy_passes: FullPasses = field(default_factory=FullPasses)
    late: float = 0.0


@dataclass
class SideBySide:
    """Every server's windows, by name, and the load generator's CPU over the busy
    window as a share of the window."""

    windows: dict[str, Windows]
    load_generator_busy: float


async def passes_of(sides: Sequence[Side]) -> list[FullPasses]:
    return [await side.read_passes() for side in sides]


def cpu_of(sides: Sequence[Side]) -> list[float]:
    """Every server's CPU so far, read back to back: one instant for all."""
    return [side.server.cpu() for side in sides]


def cpu_since(sides: Sequence[Side], before: list[float]) -> list[float]:
    return [now - then for now, then in zip(cpu_of(sides), before, strict=True)]


async def make_changes(side: Side, changes: int, started: float) -> float:
    """The side's changes, each at its slot (`started`, the side's offset and a period
    for each change before), not a pause after the last: a slow change does not push
    the side into another's slot. How late the latest began after its slot."""
    loop = asyncio.get_running_loop()
    late = 0.0
    for number in range(changes):
        slot = started + side.offset + number * CHANGE_INTERVAL_SECONDS
        await asyncio.sleep(max(0.0, slot - loop.time()))
        late = max(late, loop.time() - slot)
        await side.change(number)
    return late


async def measure_side_by_side(sides: Sequence[Side], changes: int) -> SideBySide:
    """The quiet window, then the busy one, each `WINDOW_SECONDS` long, the same two for
    every server. The collectors are read before each window's CPU and after it, so
    reading them is not measured; each side's `busy_begins` and `busy_ends` are called
    just outside the busy window's CPU."""
    loop = asyncio.get_running_loop()
    passes_before = await passes_of(sides)
    before = cpu_of(sides)
    await asyncio.sleep(WINDOW_SECONDS)
    quiet = cpu_since(sides, before)
    passes_between = await passes_of(sides)
    for side in sides:
        side.received.messages = side.received.total_bytes = 0
    for side in sides:
        await side.busy_begins()
    started, load_before, before = loop.time(), time.process_time(), cpu_of(sides)
    late = await asyncio.gather(*(make_changes(side, changes, started) for side in sides))
    await asyncio.sleep(max(0.0, started + WINDOW_SECONDS - loop.time()))
    busy = cpu_since(sides, before)
    load_busy = (time.process_time() - load_before) / (loop.time() - started)
    for side in sides:
        await side.busy_ends()
    passes_after = await passes_of(sides)
    windows = {
        side.name: Windows(
            quiet[i],
            busy[i],
            side.received,
            passes_between[i] - passes_before[i],
            passes_after[i] - passes_between[i],
            late[i],
        )
        for i, side in enumerate(sides)
    }
    return SideBySide(windows, load_busy)


def is_kind(raw: str | bytes, kind: str) -> bool:
    """Whether a message is of type `kind`. reach writes a queue message with its type
    first, so the type is read from the opening: parsing every 10 KB queue message was
    half the load generator's work (with the ASGI app, 11-14% of its core at 400
    dashboards, 6% without), and at 1,600 it holds every server's clients at once. A
    message that does not open so is parsed."""
    text = raw if isinstance(raw, str) else raw.decode()
    if text.startswith('{"type":"'):
        return text.startswith(f'{{"type":"{kind}"')
    return bool(json.loads(text)["type"] == kind)


async def listen(socket: ClientConnection, received: Received, kind: str | None) -> None:
    async for raw in socket:
        if kind is None or is_kind(raw, kind):
            received.messages += 1
            received.total_bytes += len(raw)
            received.sample = str(raw)
            received.news.set()


async def close_clients(
    listeners: list[asyncio.Task[None]], sockets: list[ClientConnection]
) -> None:
    for task in listeners:
        task.cancel()
    for socket in sockets:
        await socket.close()


async def open_dashboard(server: Server, index: int) -> ClientConnection:
    """Consultant `index`'s dashboard, away, once it is open and settled."""
    socket = await connect(
        server.base_url.replace("http://", "ws://") + "/v1/consultant/stream", max_queue=None
    )
    await socket.send(json.dumps({"type": "hello", "token": token("consultant", f"dr-{index}")}))
    # Away: the case is broadcast in the queue, never offered.
    await socket.send(json.dumps({"type": "status", "status": "away"}))
    # Measure nothing of the set-up: this dashboard is open and settled once its status
    # is confirmed.
    while json.loads(await socket.recv())["type"] != "status":
        pass
    return socket


async def submit_case(http: httpx.AsyncClient, name: str, number: int) -> None:
    crew = {"Authorization": f"Bearer {token('paramedic', 'bench-crew')}"}
    headers = {**crew, "Idempotency-Key": f"fanout-{name}-{number}-{time.time_ns()}"}
    response = await http.post("/v1/cases", json=case_body(), headers=headers)
    response.raise_for_status()


@contextlib.asynccontextmanager
async def reach_side(
    clients: int,
    *,
    connect_them: bool,
    name: str,
    offset: float = 0.0,
    server_module: str = "services.cli",
    env: dict[str, str] | None = None,
    busy_hooks: Callable[[Server], tuple[Hook, Hook]] | None = None,
) -> AsyncIterator[Side]:
    """reach served by `server_module` (`reach`'s CLI, or a benchmark's wrapper of it)
    with `env` added, `clients` consultants on the rota and, if `connect_them`, a
    dashboard open for each; a change is a case submitted. `busy_hooks`, if given, makes
    what is called as the busy window begins and ends for that server."""
    url = fresh_sqlite(f"fanout-{clients}")
    migrate(url)
    port = free_port()
    env = base_env(REACH_DATABASE_URL=url, REACH_ENVIRONMENT="dev", **(env or {}))
    command = [PYTHON, "-m", server_module, "serve", "--port", str(port)]
    label = f"fanout-reach-{clients}-{'dashboards' if connect_them else 'alone'}"
    received = Received()
    with serve(command, env=env, port=port, name=label) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
            await put_on_rota(http, clients)
            sockets = [
                await open_dashboard(server, i) for i in range(clients if connect_them else 0)
            ]
            listeners = [asyncio.create_task(listen(s, received, "queue")) for s in sockets]
            begins, ends = busy_hooks(server) if busy_hooks is not None else (nothing, nothing)
            try:
                yield Side(
                    name,
                    server,
                    received,
                    partial(submit_case, http, label),
                    offset,
                    partial(full_passes, http),
                    begins,
                    ends,
                )
            finally:
                await close_clients(listeners, sockets)


async def reach_run(
    clients: int,
    changes: int,
    *,
    connect_them: bool,
    server_module: str = "services.cli",
    env: dict[str, str] | None = None,
    busy_hooks: Callable[[Server], tuple[Hook, Hook]] | None = None,
) -> Windows:
    """The windows of `changes` cases on one reach server alone (see `reach_side`)."""
    async with reach_side(
        clients,
        connect_them=connect_them,
        name=REACH,
        server_module=server_module,
        env=env,
        busy_hooks=busy_hooks,
    ) as side:
        await asyncio.sleep(SETTLE_SECONDS)
        measured = await measure_side_by_side([side], changes)
    return measured.windows[REACH]


@dataclass
class ReachMessages:
    """reach's queue messages as its `clients` dashboards receive them, for the bare
    servers to send the same bytes: change n's broadcast is under way once more than n
    broadcasts' messages have arrived (all dashboards get the same bytes)."""

    received: Received
    clients: int
    # Changes whose message had not arrived in time: the one before was sent instead.
    late: int = 0

    async def of_change(self, number: int) -> str:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(PAYLOAD_WAIT_SECONDS):
                while not self.arrived(number):
                    self.received.news.clear()
                    await self.received.news.wait()
        if not self.arrived(number):
            self.late += 1
        if not self.received.sample:
            fail("reach's dashboards received no queue message to send the bare servers'")
        return self.received.sample

    def arrived(self, number: int) -> bool:
        return self.received.messages > number * self.clients


@contextlib.asynccontextmanager
async def broadcast_side(
    clients: int,
    *,
    name: str,
    offset: float,
    payload: Callable[[int], Awaitable[str]],
    server_module: str = "bench.baseline_broadcast",
) -> AsyncIterator[Side]:
    """A bare broadcast server (`server_module`) with `clients` sockets; a change is
    `payload` of the change's number, sent to them all."""
    port = free_port()
    command = [PYTHON, "-m", server_module, str(port)]
    received = Received()
    label = f"fanout-{server_module.rpartition('.')[2]}-{clients}"
    with serve(command, env=base_env(), port=port, name=label, probe="ws") as server:
        base = f"ws://127.0.0.1:{port}"
        sockets = [await connect(base + "/", max_queue=None) for _ in range(clients)]
        listeners = [asyncio.create_task(listen(s, received, None)) for s in sockets]
        try:
            async with connect(base + "/control") as control:

                async def broadcast(number: int) -> None:
                    await control.send(await payload(number))
                    await control.recv()

                yield Side(name, server, received, broadcast, offset)
        finally:
            await close_clients(listeners, sockets)


async def measure_round(clients: int, changes: int, *, asgi: bool) -> tuple[SideBySide, int]:
    """Every server of a round served at once, each a fresh process, and measured side by
    side; and for how many of the bare servers' changes reach's message came late."""
    async with contextlib.AsyncExitStack() as stack:

        async def reach(name: str, *, connect_them: bool) -> Side:
            side = reach_side(
                clients, connect_them=connect_them, name=name, offset=OFFSET_SECONDS[name]
            )
            return await stack.enter_async_context(side)

        # The same rota on both: only the open dashboards differ.
        sides = [await reach(REACH_IDLE, connect_them=False), await reach(REACH, connect_them=True)]
        messages = ReachMessages(sides[-1].received, clients)

        async def bare(name: str, sockets: int, module: str) -> Side:
            side = broadcast_side(
                sockets,
                name=name,
                offset=OFFSET_SECONDS[name],
                payload=messages.of_change,
                server_module=module,
            )
            return await stack.enter_async_context(side)

        sides += [
            await bare(BASELINE_IDLE, 0, "bench.baseline_broadcast"),
            await bare(BASELINE, clients, "bench.baseline_broadcast"),
        ]
        if asgi:
            sides += [
                await bare(ASGI_IDLE, 0, "bench.asgi_broadcast"),
                await bare(ASGI, clients, "bench.asgi_broadcast"),
            ]
        await asyncio.sleep(SETTLE_SECONDS)
        return await measure_side_by_side(sides, changes), messages.late


def per_message_us(with_clients: Windows, without: Windows, *, net: bool = True) -> float:
    """CPU a delivered message: what the changes cost with the clients less what they cost
    without, the quiet windows subtracted (`net`) or not (the busy windows alone)."""
    messages = with_clients.received.messages
    if messages == 0:
        return float("nan")
    held = with_clients.quiet - without.quiet if net else 0.0
    return (with_clients.busy - without.busy - held) / messages * 1e6


def times(figure: float, other: float) -> float:
    """How many times `other` `figure` is; not a number when `other` is 0 (a run too
    small for the CPU's 10 ms ticks)."""
    return figure / other if other else float("nan")


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
        return times(self.reach_us, self.base_us)


def round_of(windows: dict[str, Windows]) -> Round:
    """The figures from every server's windows."""
    reach, reach_idle = windows[REACH], windows[REACH_IDLE]
    base, base_idle = windows[BASELINE], windows[BASELINE_IDLE]
    reach_us = per_message_us(reach, reach_idle)
    # As the CPU is counted: the busy windows' passes, less those of the quiet windows
    # (already taken off as the cost of holding the sockets).
    passes = (reach.busy_passes - reach_idle.busy_passes) - (
        reach.quiet_passes - reach_idle.quiet_passes
    )
    return Round(
        reach_us=reach_us,
        base_us=per_message_us(base, base_idle),
        gross_reach_us=per_message_us(reach, reach_idle, net=False),
        gross_base_us=per_message_us(base, base_idle, net=False),
        reach_passes=passes,
        reach_without_passes_us=reach_us - passes.seconds / max(reach.received.messages, 1) * 1e6,
        asgi_us=per_message_us(windows[ASGI], windows[ASGI_IDLE]) if ASGI in windows else None,
    )


def average_size(received: Received) -> int:
    return received.total_bytes // max(received.messages, 1)


def describe_round(
    clients: int, measured: Round, side_by_side: SideBySide, late_payloads: int
) -> str:
    windows = side_by_side.windows
    reach, reach_idle = windows[REACH], windows[REACH_IDLE]
    base, base_idle = windows[BASELINE], windows[BASELINE_IDLE]
    passes, asgi_us = measured.reach_passes, measured.asgi_us
    latest = max(windows, key=lambda name: windows[name].late)
    return (
        f"{clients:>5} dashboards  messages reach {reach.received.messages:>6}"
        f" baseline {base.received.messages:>6}  ~{average_size(reach.received)} B each"
        f" (baseline ~{average_size(base.received)} B)"
        f"  CPU/message reach {measured.reach_us:8.1f} us  baseline {measured.base_us:6.1f} us"
        f"  ratio {measured.ratio:5.2f}x"
        f"  | holding {clients} sockets for {WINDOW_SECONDS:.0f} s: reach"
        f" {(reach.quiet - reach_idle.quiet) * 1e3:.0f} ms, baseline"
        f" {(base.quiet - base_idle.quiet) * 1e3:.0f} ms"
        f"  | not subtracted: reach {measured.gross_reach_us:.1f} us, baseline"
        f" {measured.gross_base_us:.1f} us, ratio"
        f" {times(measured.gross_reach_us, measured.gross_base_us):.2f}x"
        f"  | reach's full collections in the busy window: {passes.count}"
        f" ({passes.seconds * 1e3:.0f} ms); without them {measured.reach_without_passes_us:.1f} us,"
        f" ratio {times(measured.reach_without_passes_us, measured.base_us):.2f}x"
        + (
            ""
            if asgi_us is None
            else f"  | a bare ASGI app on uvicorn {asgi_us:.1f} us"
            f" ({windows[ASGI].received.messages} messages), {times(asgi_us, measured.base_us):.2f}x"
            f" the baseline; reach {times(measured.reach_us, asgi_us):.2f}x it"
        )
        + f"  | {len(windows)} servers side by side in one window: the load generator"
        f" {side_by_side.load_generator_busy:.0%} busy, the latest change {windows[latest].late * 1e3:.0f} ms"
        f" late ({latest}), reach's message late for {late_payloads} of the bare servers' changes"
    )


def one_round(clients: int, changes: int, *, asgi: bool = False) -> Round:
    """reach's two servers and the baseline's two (and the bare ASGI app's two, if
    `asgi`), each a fresh process, served at once and measured side by side; printed."""
    side_by_side, late_payloads = asyncio.run(measure_round(clients, changes, asgi=asgi))
    measured = round_of(side_by_side.windows)
    print(describe_round(clients, measured, side_by_side, late_payloads), flush=True)
    return measured


def summarise(clients: int, rounds: list[Round]) -> None:
    """The median round's ratio, and the range: what noise the side-by-side windows leave
    in one round's ratio."""
    ratios = sorted(r.ratio for r in rounds)
    print(
        f"{clients:>5} dashboards  median of {len(rounds)} rounds: ratio"
        f" {statistics.median(ratios):.2f}x (range {ratios[0]:.2f}-{ratios[-1]:.2f}x);"
        f" reach {statistics.median(r.reach_us for r in rounds):.1f} us, baseline"
        f" {statistics.median(r.base_us for r in rounds):.1f} us a message (medians);"
        f" reach without its full collections: ratio"
        f" {statistics.median(times(r.reach_without_passes_us, r.base_us) for r in rounds):.2f}x"
    )
    asgi = [times(r.asgi_us, r.base_us) for r in rounds if r.asgi_us is not None]
    if asgi:
        # reach beside the app served as it is: the stack's cost is on both sides, so this
        # is reach's own share, and a change to reach shows here first.
        own = [times(r.reach_us, r.asgi_us) for r in rounds if r.asgi_us is not None]
        print(
            f"{clients:>5} dashboards  a bare ASGI app on uvicorn, median of {len(asgi)}"
            f" rounds: {statistics.median(asgi):.2f}x the baseline"
            f" (range {min(asgi):.2f}-{max(asgi):.2f}x); reach {statistics.median(own):.2f}x"
            f" it (range {min(own):.2f}-{max(own):.2f}x)"
        )


@dataclass(frozen=True)
class SizeSplit:
    """reach's ratio to the baseline at N dashboards as `per_socket` + `per_change` / N:
    a socket's send beside the baseline's, and reach's own work once a change (the
    queue's read and encoding), in the baseline's messages."""

    per_socket: float
    per_change: float

    def ratio_at(self, clients: float) -> float:
        return self.per_socket + self.per_change / clients

    def fewest_within(self, target: float) -> float | None:
        """The fewest dashboards at which the ratio is within `target`: 0 if at any
        number, None if at none."""
        if self.per_change <= 0:  # the ratio never rises above a socket's share
            return 0.0 if self.per_socket <= target else None
        if self.per_socket >= target:
            return None
        return self.per_change / (target - self.per_socket)


def split_by_size(fewer: tuple[int, float], more: tuple[int, float]) -> SizeSplit:
    """The split that gives ratio `fewer[1]` at `fewer[0]` dashboards and `more[1]` at
    `more[0]`."""
    (few, few_ratio), (many, many_ratio) = fewer, more
    if not 0 < few < many:
        raise ValueError("two sizes, the fewer dashboards first")
    per_change = (few_ratio - many_ratio) * few * many / (many - few)
    return SizeSplit(per_socket=many_ratio - per_change / many, per_change=per_change)


def describe_split(fewer: tuple[int, float], more: tuple[int, float], base_us: float) -> str:
    """The split of the ratio between the sizes' median rounds, said; `base_us`: the
    baseline's median CPU a message, to put the cost a change in milliseconds."""
    split = split_by_size(fewer, more)
    fewest = split.fewest_within(TARGET_RATIO)
    if fewest is None:
        within = f"not within {TARGET_RATIO}x at any number"
    elif fewest == 0:
        within = f"within {TARGET_RATIO}x at any number"
    else:
        within = f"within {TARGET_RATIO}x from about {fewest:,.0f} dashboards"
    per_change = (
        f"reach's work once a change as much as {split.per_change:.0f} of the baseline's"
        f" messages, about {split.per_change * base_us / 1000:.1f} ms"
        if split.per_change > 0
        else "no cost once a change shows between these sizes: their noise is larger"
    )
    return (
        f"split over {fewer[0]:,} and {more[0]:,} dashboards: reach / baseline about"
        f" {split.per_socket:.2f} {'-' if split.per_change < 0 else '+'}"
        f" {abs(split.per_change):.0f} / dashboards (a socket's send"
        f" {split.per_socket:.2f}x the baseline's; {per_change}); {within}"
    )


def slots_in_period(asgi: bool) -> str:
    """When in each period the servers served make their changes, the earliest first."""
    served = [REACH, REACH_IDLE, BASELINE, BASELINE_IDLE] + ([ASGI, ASGI_IDLE] if asgi else [])
    slots = sorted((OFFSET_SECONDS[name] % CHANGE_INTERVAL_SECONDS, name) for name in served)
    return ", ".join(f"{slot:.2f}s {name}" for slot, name in slots)


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
    # Every server's changes, the last at the latest offset, and a second for its
    # broadcast to arrive, fit in the busy window; said before any server starts, not
    # after 1,600 dashboards have connected.
    latest = max(OFFSET_SECONDS.values())
    most = int((WINDOW_SECONDS - 1.0 - latest) / CHANGE_INTERVAL_SECONDS) + 1
    if not 0 < args.changes <= most:
        parser.error(f"--changes must be 1 to {most}: the busy window lasts {WINDOW_SECONDS:.0f} s")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if min(args.clients) < 1:
        parser.error("--clients must be at least 1: the bare servers send reach's messages")
    pin_load_generator()
    print(machine_report())
    print(
        f"settings  {args.changes} changes per server, {CHANGE_INTERVAL_SECONDS}s apart;"
        f" quiet and busy windows of {WINDOW_SECONDS:.0f} s each, the same windows for all of"
        f" a round's servers, side by side; each server's slot in the period: {slots_in_period(args.asgi)};"
        f" {args.rounds} rounds"
    )
    medians: dict[int, tuple[float, float]] = {}
    for clients in args.clients:
        rounds = [one_round(clients, args.changes, asgi=args.asgi) for _ in range(args.rounds)]
        if len(rounds) > 1:
            summarise(clients, rounds)
        medians[clients] = (
            statistics.median(r.ratio for r in rounds),
            statistics.median(r.base_us for r in rounds),
        )
    if len(medians) > 1:
        fewest, most = min(medians), max(medians)
        print(
            describe_split(
                (fewest, medians[fewest][0]),
                (most, medians[most][0]),
                statistics.median(base_us for _, base_us in medians.values()),
            )
        )


if __name__ == "__main__":
    main()
