"""What every benchmark needs: the machine and versions it ran on, servers started in
their own processes pinned to a core, wrk pinned to another, CPU accounting from /proc
(to show which side was the bottleneck), and fresh databases.

Benchmarks print; they never assert. They exit non-zero only when they cannot run.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from services.shared.auth import mint_token
from services.shared.clock import SystemClock

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
POSTGRES_ADMIN_URL = os.environ.get(
    "REACH_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
BENCH_SECRET = "bench-secret-for-people-tokens-0123456789"
BENCH_INTERNAL_SECRET = "bench-secret-for-service-tokens-012345678"
SERVER_CPU = "0"
LOAD_CPU = "1"
PACKAGES = ("fastapi", "starlette", "uvicorn", "pydantic", "sqlalchemy", "aiosqlite", "asyncpg",
            "websockets", "httpx")  # fmt: skip


def fail(message: str) -> None:
    print(f"cannot run: {message}", file=sys.stderr)
    raise SystemExit(2)


def machine_report() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = ", ".join(f"{name} {_version(name)}" for name in PACKAGES)
    lines = [
        f"machine   {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        f"python    {platform.python_version()}; {versions}",
        f"pinning   servers on core {SERVER_CPU}, load generator on core {LOAD_CPU}"
        + ("" if can_pin() else " (taskset unavailable: not pinned)"),
    ]
    return "\n".join(lines)


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def can_pin() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def pin_load_generator() -> None:
    """Run this process, the load generator, on its own core, apart from the servers'
    (children it starts are pinned to theirs by `serve`)."""
    if can_pin():
        os.sched_setaffinity(0, {int(LOAD_CPU)})


def pinned(command: list[str], cpu: str) -> list[str]:
    return ["taskset", "-c", cpu, *command] if can_pin() else command


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def threads_on_cpu_ns(pid: int) -> dict[int, int]:
    """Each live thread of a process, with its time on a CPU so far in nanoseconds (the
    first field of /proc/<pid>/task/<tid>/schedstat); none where the kernel keeps no
    such count."""
    times: dict[int, int] = {}
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
                times[int(task.name)] = int((task / "schedstat").read_text().split()[0])
    return times


@dataclass
class ProcessCpu:
    """A process's CPU time, to the nanosecond, as it grows from one reading to the next:
    /proc/<pid>/stat counts it in clock ticks (10 ms), so a difference of two readings
    was uncertain by up to two ticks; at 400 dashboards that was 10-20% of what the
    messages cost.

    The sum of every thread's own count, each as last seen: a thread that ends keeps
    what it had when last read. Where the ticks' count (which holds ended threads in
    full) grew by more than two ticks beyond it between two readings, threads ran and
    ended unseen, and the difference is added. A thread running as it is read may lag by
    its current slice (a scheduler tick, 1-4 ms): a benchmark reads at the edges of
    windows in which its servers are mostly idle."""

    pid: int
    seen: dict[int, int] = field(default_factory=dict)
    unseen: float = 0.0
    last: tuple[float, float] | None = None

    def __call__(self) -> float:
        ticks = cpu_seconds(self.pid)
        self.seen.update(threads_on_cpu_ns(self.pid))
        counted = sum(self.seen.values()) / 1e9
        if self.last is not None:
            ticks_then, counted_then = self.last
            ended_unseen = (ticks - ticks_then) - (counted - counted_then)
            if ended_unseen > 2 / os.sysconf("SC_CLK_TCK"):
                self.unseen += ended_unseen
        self.last = (ticks, counted)
        return counted + self.unseen


def core_busy(cpu: str) -> tuple[int, int]:
    """Clock ticks core `cpu` has spent busy, and in all, so far (from /proc/stat): beside
    the server's own CPU it shows what else ran on the server's core (the database)."""
    for line in Path("/proc/stat").read_text().splitlines():
        name, *ticks = line.split()
        if name == f"cpu{cpu}":
            values = [int(tick) for tick in ticks]
            idle = values[3] + values[4]  # idle and waiting for I/O
            return sum(values) - idle, sum(values)
    return 0, 0


def database_cpu_seconds() -> float:
    """CPU time so far of the PostgreSQL processes on this machine (0 when it runs
    elsewhere): what the database's share of the work costs, which a server's own CPU
    does not show. Processes that ended meanwhile are not counted."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            if is_postgres_process(int(entry.name)):
                total += cpu_seconds(int(entry.name))
    return total


def is_postgres_process(pid: int) -> bool:
    """Whether `pid` is a PostgreSQL process of this machine (its backends keep the
    command's name, whatever title they show)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "postgres"
    except OSError:
        return False


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base_url: str
    log: Path
    process_cpu: ProcessCpu | None = None

    def cpu(self) -> float:
        """The server's CPU seconds so far, to the nanosecond (`ProcessCpu`)."""
        if self.process_cpu is None:
            self.process_cpu = ProcessCpu(self.process.pid)
        return self.process_cpu()


@contextlib.contextmanager
def serve(
    command: list[str],
    *,
    env: dict[str, str],
    port: int,
    name: str,
    probe: str = "http",
    cpu: str = SERVER_CPU,
) -> Iterator[Server]:
    """Run a server on core `cpu` until the block ends; wait until it answers
    (`/docs` over HTTP, or just a TCP connection for a bare websocket server)."""
    log = Path(tempfile.gettempdir()) / f"reach-bench-{name}.log"
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            pinned(command, cpu), env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT
        )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                fail(f"{name} exited early; see {log}")
            if probe == "http":
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{base}/docs", timeout=1).status_code == 200:
                        break
            else:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), timeout=1),
                ):
                    break
            time.sleep(0.1)
        else:
            fail(f"{name} did not start; see {log}")
        yield Server(process, base, log)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REACH_")}
    env.update(
        REACH_JWT_SECRET=BENCH_SECRET,
        REACH_INTERNAL_SECRET=BENCH_INTERNAL_SECRET,
        REACH_LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


def pool_for(concurrency: int) -> dict[str, str]:
    """The database pool setting every app under test gets (reach reads it, and so does
    the baseline): a connection for each request the load keeps in flight, reach's
    default of 10 at the least, so that none waits for one or opens one mid-run."""
    return {"REACH_DATABASE_POOL_SIZE": str(max(10, concurrency))}


@dataclass(frozen=True)
class FullPasses:
    """A reach server's full garbage collections so far: how many, their seconds in all,
    and how many took at most each of the histogram's bounds."""

    count: int = 0
    seconds: float = 0.0
    up_to: tuple[tuple[float, int], ...] = ()

    def __sub__(self, other: FullPasses) -> FullPasses:
        earlier = dict(other.up_to)
        return FullPasses(
            self.count - other.count,
            self.seconds - other.seconds,
            tuple((bound, n - earlier.get(bound, 0)) for bound, n in self.up_to),
        )

    def longest_at_most(self) -> float | None:
        """The smallest bound the longest pass stayed within (None: no pass, or longer
        than every bound)."""
        return next((bound for bound, n in sorted(self.up_to) if n >= self.count > 0), None)

    def describe(self) -> str:
        if self.count == 0:
            return "none"
        longest = self.longest_at_most()
        within = f"the longest at most {longest:g} s" if longest is not None else "one past 2.5 s"
        return f"{self.count}, {self.seconds * 1e3:.0f} ms in all, {within}"


async def full_passes(http: httpx.AsyncClient) -> FullPasses:
    """A reach server's full collections so far, from `reach_gc_pause_seconds` at its
    `/metrics` (generation 2)."""
    response = await http.get("/metrics")
    response.raise_for_status()
    count, seconds, up_to = 0, 0.0, []
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.labels.get("generation") != "2":
                continue
            if sample.name == "reach_gc_pause_seconds_count":
                count = int(sample.value)
            elif sample.name == "reach_gc_pause_seconds_sum":
                seconds = sample.value
            elif sample.name == "reach_gc_pause_seconds_bucket" and sample.labels["le"] != "+Inf":
                up_to.append((float(sample.labels["le"]), int(sample.value)))
    return FullPasses(count, seconds, tuple(up_to))


@dataclass
class WrkResult:
    requests_per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    load_cpu_share: float


def run_wrk(url: str, script: Path, *, connections: int, seconds: int) -> WrkResult:
    if shutil.which("wrk") is None:
        fail("wrk is not installed (Debian package wrk)")
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    completed = subprocess.run(
        pinned(command, LOAD_CPU), capture_output=True, text=True, timeout=seconds + 30, check=False
    )
    elapsed = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The load generator's own CPU over the run: near 100% would mean it, not the server,
    # set the pace.
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return _parse_wrk(completed.stdout, used / elapsed)


def _parse_wrk(output: str, load_share: float) -> WrkResult:
    def latency(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        if not match:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    errors = int(non_2xx.group(1)) if non_2xx else 0
    if socket_errors:
        errors += sum(int(group) for group in socket_errors.groups())
    return WrkResult(
        requests_per_second=float(rps.group(1)) if rps else 0.0,
        p50_ms=latency("50"),
        p90_ms=latency("90"),
        p99_ms=latency("99"),
        errors=errors,
        load_cpu_share=load_share,
    )


async def _recreate_database(name: str) -> str:
    dsn = (
        make_url(POSTGRES_ADMIN_URL)
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    )
    connection = await asyncpg.connect(dsn, timeout=5)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def fresh_postgres(name: str) -> str | None:
    """A new empty PostgreSQL database, or None when no server answers."""
    try:
        return asyncio.run(_recreate_database(name))
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return None


def token(role: str, sub: str) -> str:
    """A bearer token for `sub` in `role`, signed with the servers' benchmark secret."""
    return mint_token(BENCH_SECRET, sub=sub, role=role, name=sub, clock=SystemClock())


async def put_on_rota(http: httpx.AsyncClient, consultants: int) -> None:
    """Consultants `dr-0` onwards, frailty, on the rota of the reach `http` talks to."""
    admin = {"Authorization": f"Bearer {token('admin', 'bench-admin')}"}
    for index in range(consultants):
        response = await http.put(
            f"/v1/consultants/dr-{index}",
            json={"name": f"dr-{index}", "grade": "consultant", "specialties": ["frailty"]},
            headers=admin,
        )
        response.raise_for_status()


def fresh_sqlite(name: str) -> str:
    folder = Path(tempfile.mkdtemp(prefix=f"reach-bench-{name}-"))
    return f"sqlite+aiosqlite:///{folder / 'reach.db'}"


def databases(name: str) -> Iterator[tuple[str, str]]:
    """A fresh database on each backend, by backend name: SQLite, then PostgreSQL if a
    server answers (said, and skipped, if none does)."""
    yield "sqlite", fresh_sqlite(name)
    postgres = fresh_postgres(f"reach_bench_{name}")
    if postgres is None:
        print("postgresql: no server answers; skipped")
        return
    yield "postgresql", postgres


def migrate(url: str) -> None:
    subprocess.run(
        [PYTHON, "-m", "services.cli", "migrate", "--database-url", url],
        check=True, env=base_env(), cwd=ROOT, capture_output=True,
    )  # fmt: skip
