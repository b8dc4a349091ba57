"""Where a case's routing time goes: the outbox delivery passes of the routing benchmark's
load, by kind, with the statements each sends, its wall time and its CPU, on the embedded
default (SQLite) and on PostgreSQL.

The hand-over of a new case to the router (triage_api's prompt lane: the claim, the
router's inbox, the case written, routed and offered, all in one transaction) is most of
the time from `POST /v1/cases` returning to the offer on the consultant's socket; the
other kinds are the crew's cancellation, the router's news back to the crew, and audit's
lane. The load is the routing benchmark's, at a low rate (4 cases a second by default),
so passes seldom overlap and a pass's CPU, counted by the server for the pass's span, is
its own. For the longest kind (a new case's hand-over), the time before and in each
statement, and in its commit. Statement counts do not move with the machine; wall and CPU do, so compare
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
    passes, count = traced_passes(backend, url, rate, seconds)
    summarise(passes, cases=count)


def traced_passes(
    backend: str, url: str, rate: float, seconds: float
) -> tuple[list[dict[str, Any]], int]:
    """The routing load at `rate` on `url`, served by `bench.traced_server`: the passes it
    traced (`TracedPass`, as JSON), and how many cases were measured."""
    out = Path(tempfile.gettempdir()) / f"reach-bench-passes-{backend}.json"
    out.unlink(missing_ok=True)
    with routing_server(
        backend, url, name="passes", module="bench.traced_server", **{OUT_VARIABLE: str(out)}
    ) as server:
        run, count = asyncio.run(measure(server.base_url, rate, seconds, server.cpu))
        report(backend, rate, run, count)
    # Written as the server stopped.
    passes: list[dict[str, Any]] = json.loads(out.read_text(encoding="utf-8"))
    return passes, count


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
    shown = [kind for kind, seen in kinds.items() if len(seen) >= SHOWN_PER_CASE * cases]
    if shown:
        longest = max(shown, key=lambda kind: (len(kind[2]), len(kinds[kind])))
        print_steps(longest[2], kinds[longest])


def print_steps(statements: tuple[str, ...], seen: list[dict[str, Any]]) -> None:
    """Where the longest kind of pass spends its time, statement by statement (medians
    over its passes): the Python before each statement (since the last one's result, or
    the pass's start), the statement itself (sent to result back: the round trip and the
    driver's work), then the COMMIT's building, its round trip, the after-commit
    callbacks, the session's close (its connection back in the pool), and the rest of
    the pass. CPU is the process's: whatever another task ran while the pass awaited is
    in it, which at this low rate is seldom much, except at the end. SQLAlchemy closes a
    session in a task of its own, and the pass resumes only after the tasks its commit
    woke (the offer on its way to the consultant's socket, the routing loop...) have had
    their turn: the rest of the pass is mostly their work, not its own."""
    print(f"  where a pass of {len(statements)} statements spends its time (wall / CPU, ms):")

    def median(values: list[float]) -> str:
        return f"{statistics.median(values):5.2f}"

    previous: list[tuple[float, float]] = [(0.0, 0.0)] * len(seen)
    for index, statement in enumerate(statements):
        steps = [traced["timings"][index] for traced in seen]
        before_wall = [step[0] - last[0] for step, last in zip(steps, previous, strict=True)]
        before_cpu = [step[1] - last[1] for step, last in zip(steps, previous, strict=True)]
        print(
            f"    before {median(before_wall)} / {median(before_cpu)}"
            f"   statement {median([s[2] - s[0] for s in steps])}"
            f" / {median([s[3] - s[1] for s in steps])}   {statement}"
        )
        previous = [(step[2], step[3]) for step in steps]
    for mark in ("commit sent", "commit back", "callbacks run", "connection returned"):
        if not all(mark in traced["marks"] for traced in seen):
            continue
        steps = [traced["marks"][mark] for traced in seen]
        wall = [step[0] - last[0] for step, last in zip(steps, previous, strict=True)]
        cpu = [step[1] - last[1] for step, last in zip(steps, previous, strict=True)]
        print(f"    then   {median(wall)} / {median(cpu)}   to the {mark}")
        previous = [(step[0], step[1]) for step in steps]
    after_wall = [t["wall_ms"] - last[0] for t, last in zip(seen, previous, strict=True)]
    after_cpu = [t["cpu_ms"] - last[1] for t, last in zip(seen, previous, strict=True)]
    print(
        f"    then   {median(after_wall)} / {median(after_cpu)}   to the pass's end (mostly"
        " the work of the tasks its commit woke)"
    )


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
