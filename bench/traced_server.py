"""`reach serve` with every outbox delivery pass timed and its statements listed, for
`bench.delivery_passes`. Instrumentation a benchmark adds from outside (an engine event
and a wrapper around the pass), never part of a service. The passes are written as JSON
to the file named by `REACH_BENCH_PASSES_OUT` when the server stops.

    python -m bench.traced_server serve --port 8000
"""

from __future__ import annotations

import atexit
import contextvars
import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool

from services import cli
from services.shared.db.session import ReachSession
from services.shared.outbox.delivery import OutboxDelivery

OUT_VARIABLE = "REACH_BENCH_PASSES_OUT"
_WRITES = re.compile(r"^\s*(INSERT INTO|UPDATE|DELETE FROM)\s+(\w+)")
_READS = re.compile(r"\bFROM\s+(\w+)")


@dataclass
class TracedPass:
    service: str
    lane: str
    statements: list[str] = field(default_factory=list)
    wall_ms: float = 0.0
    cpu_ms: float = 0.0
    # For each statement, from the pass's start: when it was sent and when its result was
    # back, in wall and CPU milliseconds ([sent_wall, sent_cpu, back_wall, back_cpu]).
    timings: list[list[float]] = field(default_factory=list)
    # When the COMMIT was sent, when it was back, when the after-commit callbacks were
    # done, and when the session's connection was back in the pool, from the pass's start
    # ([wall, cpu] each).
    marks: dict[str, list[float]] = field(default_factory=dict)
    started_wall: float = field(default=0.0, repr=False)
    started_cpu: float = field(default=0.0, repr=False)

    def since_start(self) -> tuple[float, float]:
        return (
            (time.perf_counter() - self.started_wall) * 1000,
            (time.process_time() - self.started_cpu) * 1000,
        )


def label(statement: str) -> str:
    """What a statement does, in two words: `UPDATE consult_case`, `SELECT consult_offer`
    (the table read at the top level, not in a subquery); a claim that marks rows
    delivered (`WITH due AS (...) UPDATE`) is `CLAIM <outbox>`, inserts fed by a `WITH`
    (a consultant's message, numbered; an offer and its message) `WITH INSERT <tables>`,
    and the transaction's `pg_notify` `NOTIFY`, with `+ INSERT <table>` for each table
    whose rows ride in it."""
    top = _top_level(statement)
    if "pg_notify" in top:  # riders: the rows inserted at the commit, in its `WITH`
        riders = re.findall(r"\bINSERT INTO\s+(\w+)", statement)
        return " + ".join(["NOTIFY", *(f"INSERT {table}" for table in riders)])
    if top.startswith("WITH"):
        written = re.search(r"\bUPDATE\s+(\w+)\s+SET\b", top)
        if written:
            return f"CLAIM {written.group(1)}"
        inserted = re.findall(r"\bINSERT INTO\s+(\w+)", statement)
        return f"WITH INSERT {' + '.join(inserted)}" if inserted else "WITH"
    write = _WRITES.match(top)
    if write:
        return f"{write.group(1).split()[0]} {write.group(2)}"
    if top.startswith("SELECT"):
        read = _READS.search(top)
        return f"SELECT {read.group(1)}" if read else statement.split("(")[0].strip()
    return top.split()[0] if top.split() else "?"


def _top_level(statement: str) -> str:
    """The statement with whatever is in parentheses left out."""
    depth, kept = 0, []
    for character in statement.strip():
        if character == "(":
            depth += 1
        elif character == ")":
            depth = max(depth - 1, 0)
        elif depth == 0:
            kept.append(character)
    return "".join(kept)


_current: contextvars.ContextVar[TracedPass | None] = contextvars.ContextVar(
    "traced_pass", default=None
)
_passes: list[TracedPass] = []


def _record_statement(_connection: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
    traced = _current.get()
    if traced is not None:
        traced.statements.append(label(statement))
        traced.timings.append([*traced.since_start(), 0.0, 0.0])


def _record_result(*_args: Any) -> None:
    traced = _current.get()
    if traced is not None and traced.timings:
        traced.timings[-1][2:] = traced.since_start()


def _mark(name: str) -> Callable[..., None]:
    def record(*_args: Any) -> None:
        traced = _current.get()
        if traced is not None and name not in traced.marks:
            traced.marks[name] = list(traced.since_start())

    return record


def _install() -> None:
    event.listen(Engine, "commit", _mark("commit sent"))
    event.listen(ReachSession, "after_commit", _mark("commit back"), insert=True)
    event.listen(ReachSession, "after_commit", _mark("callbacks run"))
    # The session's close, which SQLAlchemy runs in a task of its own (so that a
    # cancellation cannot cut it short), ends with the connection back in the pool.
    event.listen(Pool, "checkin", _mark("connection returned"))
    event.listen(Engine, "before_cursor_execute", _record_statement)
    event.listen(Engine, "after_cursor_execute", _record_result)
    original = OutboxDelivery._pass

    async def traced(self: OutboxDelivery, *, deferred: bool, savepoints: bool) -> bool:
        current = TracedPass(self._service, "deferred" if deferred else "prompt")
        token = _current.set(current)
        current.started_wall, current.started_cpu = time.perf_counter(), time.process_time()
        try:
            return await original(self, deferred=deferred, savepoints=savepoints)
        finally:
            current.wall_ms, current.cpu_ms = current.since_start()
            _current.reset(token)
            if len(current.statements) > 1:  # a claim that found nothing is not a pass
                _passes.append(current)

    OutboxDelivery._pass = traced  # type: ignore[method-assign]


def _write_passes() -> None:
    out = os.environ.get(OUT_VARIABLE)
    if out:
        with open(out, "w", encoding="utf-8") as sink:
            json.dump([asdict(traced) for traced in _passes], sink)


if __name__ == "__main__":
    _install()
    atexit.register(_write_passes)
    raise SystemExit(cli.main(sys.argv[1:]))
