"""Where a case's CPU goes, by the part of reach that spends it: the routing benchmark's
load (each case submitted, offered, then cancelled by its crew) on the embedded default
(SQLite) and on PostgreSQL, with the server's event-loop CPU charged to HTTP routes,
outbox lanes, the routing loop and the transactions run apart (`bench.parts_server`).

A profiler's samples say which functions are hot; this says which part of a case's life
pays for them, so the next change is aimed at the largest part. Figures are shares of one
run and move with the machine; compare builds run by run, interleaved, on one machine.

    python -m bench.case_parts [--rate 30] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import databases, machine_report, pin_load_generator
from bench.parts_server import OUT_VARIABLE, wait_for_parts
from bench.routing_latency import WARM_UP_CASES, measure, report, routing_server

SHOWN_SHARE = 0.005  # parts below half a per cent of the loop's CPU are summed as "other"

# What the parts that matter do, for the reader.
MEANING = {
    "outbox delivery from triage_api (prompt)": "the router takes the crews' events: "
    "cases written, routed, offered; cancellations",
    "outbox delivery from consult_router (prompt)": "the crews' side takes the router's "
    "news (offered, accepted...)",
    "outbox delivery from triage_api (deferred)": "audit's trail takes the crews' events",
    "outbox delivery from consult_router (deferred)": "audit's trail takes the router's events",
    "case intake-group-commit, apart": "submissions written together (group commit)",
    "consult_router-routing": "the routing loop: passes woken by changes, sweeps",
    "consult_router-queue-feed, apart": "the queue's changes read for the dashboards",
    "WEBSOCKET /v1/consultant/stream, apart": "consultants' sockets: messages read and sent",
    "event loop: I/O and other callbacks": "sockets read, timers, futures resolved",
}


def profiled_run(backend: str, url: str, rate: float, seconds: float) -> None:
    parts, count = profiled_parts(backend, url, rate, seconds)
    if parts is None:
        print(f"{backend:<10} the server wrote no parts (see its log)")
        return
    # The warm-up's cases are counted with the run's (see `measure`); a second run on the
    # same server would meet the first's leftovers.
    summarise(parts, cases=count + WARM_UP_CASES, process_cpu=parts["process_cpu"])


def profiled_parts(
    backend: str, url: str, rate: float, seconds: float
) -> tuple[dict[str, Any] | None, int]:
    """The routing load at `rate` on `url`, served by `bench.parts_server`: the parts it
    counted over the run (`Parts.report`; None if it wrote none), and how many cases were
    measured."""
    out = Path(tempfile.gettempdir()) / f"reach-bench-parts-{backend}.json"
    out.unlink(missing_ok=True)
    with routing_server(
        backend, url, name="parts", module="bench.parts_server", **{OUT_VARIABLE: str(out)}
    ) as server:
        server.process.send_signal(signal.SIGUSR1)  # count from here, not from start-up
        time.sleep(0.5)
        run, count = asyncio.run(measure(server.base_url, rate, seconds, server.cpu))
        server.process.send_signal(signal.SIGUSR2)  # the parts of this run, and no more
        wait_for_parts(out)
        report(backend, rate, run, count)
    if not (out.exists() and out.stat().st_size):
        return None, count
    parts: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return parts, count


def summarise(parts: dict[str, Any], *, cases: int, process_cpu: float) -> None:
    cpu: dict[str, float] = parts["cpu"]
    steps: dict[str, int] = parts["steps"]
    collector = {name: value for name, value in cpu.items() if name.startswith("garbage")}
    on_loop = {name: value for name, value in cpu.items() if name not in collector}
    total = sum(on_loop.values())
    print(
        f"  server CPU {process_cpu / cases * 1000:.1f} ms a case; the event loop's callbacks"
        f" {total / cases * 1000:.1f} ms ({total / process_cpu:.0%}; the rest: waiting on"
        " sockets, SQLite's thread, the kernel)"
    )
    other = 0.0
    for name, value in sorted(on_loop.items(), key=lambda item: -item[1]):
        if value / total < SHOWN_SHARE:
            other += value
            continue
        meaning = MEANING.get(name, "")
        print(
            f"  {value / cases * 1000:6.2f} ms  {value / total:5.1%}"
            f"  {steps.get(name, 0) / cases:5.1f} steps  {name}"
            + (f": {meaning}" if meaning else "")
        )
    print(f"  {other / cases * 1000:6.2f} ms  {other / total:5.1%}  the rest")
    collected = sum(collector.values())
    print(
        f"  of which the garbage collector {collected / cases * 1000:.2f} ms"
        f" ({collected / total:.1%})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    pin_load_generator()
    print(machine_report())
    print(
        f"settings  {args.rate:g} cases/s for {args.seconds:g} s, and {WARM_UP_CASES} cases"
        " first; asyncio's event loop (see bench.parts_server); ms of CPU a case, share"
        " of the loop's, loop steps a case"
    )
    for backend, url in databases("parts"):
        profiled_run(backend, url, args.rate, args.seconds)


if __name__ == "__main__":
    main()
