"""Where reach's CPU for a fan-out goes, by the part of reach that spends it: the
`ws_fanout` load (the same consultants on the rota, a case submitted every 0.4 s) served
by `bench.parts_server`, once without dashboards and once with one open for each
consultant, and each part's CPU in the busy window with them less without, for each
message the dashboards received.

`ws_fanout` gives reach's CPU a message as the difference of two whole processes' CPU
(served side by side, over the same windows). Here the changes' own work (storing the
case, routing it, the outboxes) falls in parts of its own, the same with dashboards and
without, and the broadcast's parts stand apart: the queue feed's sends, its read of the
queue at each change, the event loop's callbacks (the sockets' writes that had to wait),
and the collector. Compare builds part by part, run by run, on one machine. The event
loop is asyncio's here, not uvloop (see `bench.parts_server`), so the figures are not
`ws_fanout`'s.

    python -m bench.fanout_parts [--clients 400] [--changes 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import Server, fail, machine_report, pin_load_generator
from bench.parts_server import OUT_VARIABLE, wait_for_parts
from bench.ws_fanout import CHANGE_INTERVAL_SECONDS, Hook, reach_run

SHOWN_US = 0.05  # parts whose difference is below this, either way, are summed as "other"

FEED = "consult_router-queue-feed"
MEANING = {
    FEED: "the feed: each change's sends to every dashboard, and"
    " its read of the queue where a build reads it in the feed's task",
    f"{FEED}, apart": "the feed's work in tasks of its own (its read, where a build runs it apart)",
    "event loop: I/O and other callbacks": "sockets' writes that waited, timers, futures",
}


def _parts_hooks(out: Path) -> Callable[[Server], tuple[Hook, Hook]]:
    """The parts server's count begins with the busy window (SIGUSR1) and is written to
    `out` as it ends (SIGUSR2), before the sockets close."""

    def hooks(server: Server) -> tuple[Hook, Hook]:
        async def begins() -> None:
            server.process.send_signal(signal.SIGUSR1)
            await asyncio.sleep(0.2)  # handled between the loop's callbacks

        async def ends() -> None:
            server.process.send_signal(signal.SIGUSR2)
            await asyncio.to_thread(wait_for_parts, out)

        return begins, ends

    return hooks


def parts_of_run(clients: int, changes: int, *, connect_them: bool) -> tuple[dict[str, Any], int]:
    """The busy window's parts, and the messages the dashboards received in it."""
    out = Path(tempfile.gettempdir()) / f"reach-bench-fanout-parts-{connect_them}.json"
    out.unlink(missing_ok=True)
    windows = asyncio.run(
        reach_run(
            clients,
            changes,
            connect_them=connect_them,
            server_module="bench.parts_server",
            env={OUT_VARIABLE: str(out)},
            busy_hooks=_parts_hooks(out),
        )
    )
    if not (out.exists() and out.stat().st_size):
        fail("the parts server wrote no parts (see its log)")
    parts: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return parts, windows.received.messages


def report(
    clients: int, changes: int, alone: dict[str, Any], watched: dict[str, Any], messages: int
) -> None:
    if messages == 0:
        fail("the dashboards received nothing")
    cpu_alone: dict[str, float] = alone["cpu"]
    cpu_watched: dict[str, float] = watched["cpu"]
    names = set(cpu_alone) | set(cpu_watched)
    differences = {
        n: (cpu_watched.get(n, 0.0) - cpu_alone.get(n, 0.0)) / messages * 1e6 for n in names
    }
    process = (watched["process_cpu"] - alone["process_cpu"]) / messages * 1e6
    print(
        f"{clients:>5} dashboards  {messages} messages; the process's CPU with them less"
        f" without: {process:.2f} us a message"
    )
    other = 0.0
    for name, us in sorted(differences.items(), key=lambda item: -item[1]):
        if abs(us) < SHOWN_US:
            other += us
            continue
        meaning = MEANING.get(name, "")
        print(f"  {us:7.2f} us  {name}" + (f": {meaning}" if meaning else ""))
    print(f"  {other:7.2f} us  the rest")
    # The feed's read runs in the feed's task or in one of its own, as a build has it.
    feed = sum(us for name, us in differences.items() if name.startswith(FEED))
    print(
        f"  the queue feed in all (its reads, encoding and sends): {feed:.2f} us a message,"
        f" {feed * messages / changes / 1000:.2f} ms a change"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=400)
    parser.add_argument("--changes", type=int, default=40)
    args = parser.parse_args()
    pin_load_generator()
    print(machine_report())
    print(
        f"settings  {args.changes} changes, {CHANGE_INTERVAL_SECONDS}s apart; asyncio's event"
        " loop (see bench.parts_server); us of CPU a delivered message, with the dashboards"
        " less without"
    )
    alone, _ = parts_of_run(args.clients, args.changes, connect_them=False)
    watched, messages = parts_of_run(args.clients, args.changes, connect_them=True)
    report(args.clients, args.changes, alone, watched, messages)


if __name__ == "__main__":
    main()
