"""Where a case's routing time goes: the outbox delivery passes of the routing benchmark's
load, by kind, with the statements each sends, its wall time and its CPU, on the embedded
default (SQLite) and on PostgreSQL.

The hand-over of a new case to the router (triage_api's prompt lane: the claim, the
router's inbox, the case written, routed and offered, all in one transaction) is most of
the time from `POST /v1/cases` returning to the offer on the consultant's socket; the
other kinds are the crew's cancellation, the router's news back to the crew, and audit's
lane. The load is the routing benchmark's, at a low rate (4 cases a second by default),
so passes seldom overlap and a pass's CPU, counted by the server for the pass's span, is
its own. Statement counts do not move with the machine; wall and CPU do, so compare
builds run by run, interleaved, on one machine (see `bench/RESULTS.md`).

    python -m bench.delivery_passes [--rate 4] [--seconds 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.harness import databases, machine_report
from bench.routing_latency import measure, report, routing_server
from bench.traced_server import OUT_VARIABLE

# A kind of pass shown if it came at least this often a case (rarer ones are a retry, a
# batch of two cases, a sweep).
SHOWN_PER_CASE = 0.2


def traced_run(backend: str, url: str, rate: float, seconds: float) -> None:
    out = Path(tempfile.gettempdir()) / f"reach-bench-passes-{backend}.json"
    with routing_server(
        backend, url, name="passes", module="bench.traced_server", **{OUT_VARIABLE: str(out)}
    ) as server:
        run, count = asyncio.run(measure(server.base_url, rate, seconds, server.cpu))
        report(backend, rate, run, count)
    passes: list[dict[str, Any]] = json.loads(out.read_text(encoding="utf-8"))
    summarise(passes, cases=count)


def summarise(passes: list[dict[str, Any]], *, cases: int) -> None:
    kinds: dict[tuple[str, str, tuple[str, ...]], list[dict[str, Any]]] = defaultdict(list)
    for traced in passes:
        kinds[(traced["service"], traced["lane"], tuple(traced["statements"]))].append(traced)
    for (service, lane, statements), seen in sorted(kinds.items(), key=lambda kv: -len(kv[1])):
        if len(seen) < SHOWN_PER_CASE * cases:
            continue
        wall = statistics.median(traced["wall_ms"] for traced in seen)
        cpu = statistics.median(traced["cpu_ms"] for traced in seen)
        print(
            f"  {service:<15} {lane:<8} passes {len(seen):>5}  statements {len(statements):>3}"
            f"  wall p50 {wall:6.2f} ms  CPU p50 {cpu:6.2f} ms"
        )
        print(f"      {', '.join(statements)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=4.0)
    parser.add_argument("--seconds", type=float, default=40.0)
    args = parser.parse_args()
    print(machine_report())
    print(f"settings  {args.rate:.0f} cases/s for {args.seconds:.0f} s; passes by kind")
    for backend, url in databases("passes"):
        traced_run(backend, url, args.rate, args.seconds)


if __name__ == "__main__":
    main()
