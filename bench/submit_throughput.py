"""Case submission throughput: reach's `POST /v1/cases` (validation, NEWS2, idempotency,
the case, its stream event, outbox rows, metrics) against a baseline FastAPI app that
validates the same body and inserts one ORM row, measured side by side in one run, at a
fixed concurrency, on SQLite and on PostgreSQL.

Targets: reach >= 1.0x the baseline's requests per second, and reach's p99 <= 10x its p50.

The apps take turns, round after round (baseline, triage-api, embedded, baseline...), and
each ratio is taken within a round, so a shared machine's drift moves both sides of it;
the summary gives the median over the rounds and the range.

Beside each run: the server's own CPU, its core's busy share (the server and whatever
else the scheduler put there: on PostgreSQL, database processes), the database's CPU
wherever it ran, and wrk's. A server core busier than the server says the database took
part of the server's core, and the server's idle share is not waiting alone.

    python -m bench.submit_throughput [--connections 16] [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.harness import (
    BENCH_SECRET,
    LOAD_CPU,
    PYTHON,
    SERVER_CPU,
    WrkResult,
    base_env,
    core_busy,
    database_cpu_seconds,
    fail,
    free_port,
    fresh_postgres,
    fresh_sqlite,
    machine_report,
    migrate,
    pool_for,
    run_wrk,
    serve,
)
from services.shared.auth import mint_token
from services.shared.clock import SystemClock
from tests.factories import case_body

WARM_UP_SECONDS = 3
# reach-split: triage-api alone on the server's core, doing what the target names
# (validation, NEWS2, idempotency, the case, the outbox); reach: the embedded default,
# where the same process also routes each case and records it in the audit trail.
APPS = ("baseline", "reach-split", "reach")

LUA = """
counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(token)s"
wrk.body = '%(body)s'
request = function()
  counter = counter + 1
  wrk.headers["Idempotency-Key"] = string.format("bench-%(run)s-%%d", counter)
  return wrk.format()
end
"""


@dataclass
class Row:
    backend: str
    round: int
    app: str
    result: WrkResult
    usage: Usage


@dataclass
class Usage:
    """Shares of a core over a run: the server's own CPU, its core busy with anything
    (the server, and any database process the scheduler put there), and the database's
    processes wherever they ran."""

    server: float
    server_core: float
    database: float


def wrk_script() -> Path:
    """A script whose every request is a new case: keys never repeat across runs (a
    repeated key would be an idempotent replay, which is not what is being measured)."""
    token = mint_token(BENCH_SECRET, sub="crew-bench", role="paramedic", clock=SystemClock())
    body = json.dumps(case_body()).replace("'", "\\'")
    run = uuid.uuid4().hex[:12]
    path = Path(tempfile.gettempdir()) / f"reach-bench-submit-{run}.lua"
    path.write_text(LUA % {"token": token, "body": body, "run": run})
    return path


def reach_command(port: int, url: str, service: str | None = None) -> list[str]:
    command = [PYTHON, "-m", "services.cli", "serve"] + ([service] if service else [])
    return [*command, "--port", str(port), "--database-url", url]


@contextlib.contextmanager
def peers_of_triage(url: str) -> Iterator[dict[str, str]]:
    """The router and audit as their own processes on the load generator's core (wrk
    uses 1-2% of it), so triage-api's outbox is delivered as in production; yields the
    settings that point triage-api at them.

    They keep their tables in a database of their own (`url`), as split services would
    on SQLite: one file has one writer at a time, and three processes writing to one
    file spend their time in each other's locks (triage-api sat idle a fifth of the
    run, waiting out SQLite's busy handler while the router wrote)."""
    ports = {"consult-router": free_port(), "audit": free_port()}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    env = base_env(REACH_CONSULT_ROUTER_URL=urls["consult-router"], REACH_AUDIT_URL=urls["audit"])
    with contextlib.ExitStack() as stack:
        for name, port in ports.items():
            stack.enter_context(
                serve(reach_command(port, url, name), env=env, port=port, name=name, cpu=LOAD_CPU)
            )
        yield {"REACH_CONSULT_ROUTER_URL": urls["consult-router"], "REACH_AUDIT_URL": urls["audit"]}


def measure(
    app: str, url: str, *, peers_url: str | None, connections: int, seconds: int
) -> tuple[WrkResult, Usage]:
    """One app under wrk; `peers_url` is the database of triage-api's peers (split only)."""
    port = free_port()
    pool = pool_for(connections)
    with contextlib.ExitStack() as stack:
        if app == "baseline":
            command = [PYTHON, "-m", "uvicorn", "--factory", "bench.baseline_app:create_app",
                       "--port", str(port), "--log-level", "warning", "--no-access-log"]  # fmt: skip
            env = base_env(REACH_DATABASE_URL=url, **pool)
        else:
            migrate(url)
            service = "triage-api" if app == "reach-split" else None
            command = reach_command(port, url, service)
            peers = {}
            if service is not None and peers_url is not None:
                migrate(peers_url)
                peers = stack.enter_context(peers_of_triage(peers_url))
            env = base_env(**peers, **pool)
        server = stack.enter_context(serve(command, env=env, port=port, name=app))
        target = f"{server.base_url}/v1/cases"
        run_wrk(target, wrk_script(), connections=connections, seconds=WARM_UP_SECONDS)
        cpu_before, core_before, database_before = (
            server.cpu(),
            core_busy(SERVER_CPU),
            database_cpu_seconds(),
        )
        result = run_wrk(target, wrk_script(), connections=connections, seconds=seconds)
        (busy_before, ticks_before), (busy_after, ticks_after) = core_before, core_busy(SERVER_CPU)
        usage = Usage(
            server=(server.cpu() - cpu_before) / seconds,
            server_core=(busy_after - busy_before) / max(ticks_after - ticks_before, 1),
            database=(database_cpu_seconds() - database_before) / seconds,
        )
    return result, usage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(machine_report())
    print(f"load      wrk, 1 thread, {args.connections} connections, {args.seconds}s after a "
          f"{WARM_UP_SECONDS}s warm-up; the same body for every app; {args.rounds} rounds, "
          "the apps in turn")  # fmt: skip
    rows: list[Row] = []
    backends = {"sqlite": lambda name: fresh_sqlite(name), "postgresql": fresh_postgres}
    for backend, fresh in backends.items():
        for round_number in range(1, args.rounds + 1):
            measured = measure_round(fresh, connections=args.connections, seconds=args.seconds)
            if measured is None:
                print(f"skipping {backend}: no PostgreSQL server answers")
                break
            rows.extend(Row(backend, round_number, *row) for row in measured)
    if not rows:
        fail("nothing could be measured")
    print_rows(rows)
    print_summary(rows)


def measure_round(
    fresh: Callable[[str], str | None], *, connections: int, seconds: int
) -> list[tuple[str, WrkResult, Usage]] | None:
    """Every app once, each on a fresh database; None if the backend is not there."""
    measured = []
    for app in APPS:
        url = fresh(f"reach_bench_{app.replace('-', '_')}")
        peers_url = fresh("reach_bench_peers") if app == "reach-split" else None
        if url is None or (app == "reach-split" and peers_url is None):
            return None
        result, usage = measure(
            app, url, peers_url=peers_url, connections=connections, seconds=seconds
        )
        measured.append((app, result, usage))
    return measured


def print_rows(rows: list[Row]) -> None:
    print()
    print(f"{'backend':<11}{'round':>5}  {'app':<13}{'req/s':>8}{'p50 ms':>9}{'p90 ms':>9}"
          f"{'p99 ms':>9}{'errors':>8}{'server CPU':>12}{'its core':>10}{'database':>10}"
          f"{'wrk CPU':>9}")  # fmt: skip
    for row in rows:
        r = row.result
        print(f"{row.backend:<11}{row.round:>5}  {row.app:<13}{r.requests_per_second:>8.0f}"
              f"{r.p50_ms:>9.1f}{r.p90_ms:>9.1f}{r.p99_ms:>9.1f}{r.errors:>8}"
              f"{row.usage.server:>11.0%}{row.usage.server_core:>10.0%}"
              f"{row.usage.database:>10.0%}{r.load_cpu_share:>9.0%}")  # fmt: skip


def print_summary(rows: list[Row]) -> None:
    print()
    for backend in ("sqlite", "postgresql"):
        by_round: dict[int, dict[str, WrkResult]] = {}
        for row in rows:
            if row.backend == backend:
                by_round.setdefault(row.round, {})[row.app] = row.result
        for app in APPS[1:]:
            ratios, tails = [], []
            for measured in by_round.values():
                baseline, reach = measured.get("baseline"), measured.get(app)
                if baseline is None or reach is None:
                    continue
                ratios.append(reach.requests_per_second / max(baseline.requests_per_second, 1e-9))
                tails.append(reach.p99_ms / max(reach.p50_ms, 1e-9))
            if not ratios:
                continue
            print(f"{backend:<11} {app + '/baseline':<21} throughput {statistics.median(ratios):.2f}x"
                  f" (rounds {min(ratios):.2f}-{max(ratios):.2f}; target >= 1.0)"
                  f"   p99/p50 {statistics.median(tails):.1f}x (target <= 10)")  # fmt: skip


if __name__ == "__main__":
    main()
