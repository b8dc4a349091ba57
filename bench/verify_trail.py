"""Audit trail verification: how long a full verification of 100,000 entries takes, and an
incremental one (from the checkpoint) after 1,000 more, on SQLite and on PostgreSQL; and
how fast events are ingested through audit's internal endpoint.

The trail is built with the service's own hashing, written in bulk, so the figures are
those of reading and re-hashing, not of building.

    python -m bench.verify_trail [--entries 100000] [--ingest 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import insert

from bench.harness import databases, machine_report, migrate
from services.audit.app import create_app
from services.audit.chain import GENESIS
from services.audit.settings import AuditSettings
from services.audit.trail import HEAD_ID, entry_hash
from services.audit.verification import verify
from services.shared.auth import ServiceTokenSigner
from services.shared.clock import SystemClock
from services.shared.db.models import AuditChainHead, AuditEntry
from services.shared.db.session import unit_of_work
from services.shared.ids import new_event_id, new_id
from services.shared.resources import open_resources

SECRET = "bench-secret-for-service-tokens-012345678"
CHUNK = 5000


class _Row:
    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


async def build(url: str, entries: int, *, start: int = 0, prev: str = GENESIS) -> str:
    settings = AuditSettings(database_url=url, internal_secret=SECRET, jwt_secret=SECRET)
    async with open_resources(settings) as resources:
        at = datetime(2026, 11, 1, tzinfo=UTC)
        for first in range(start + 1, start + entries + 1, CHUNK):
            rows = []
            for seq in range(first, min(first + CHUNK, start + entries + 1)):
                values = {
                    "seq": seq, "event_id": new_event_id(), "event_type": "case.viewed",
                    "source": "triage_api", "subject_id": new_id(),
                    "actor_sub": "crew-ne23", "actor_role": "paramedic",
                    "occurred_at": at + timedelta(seconds=seq),
                    "recorded_at": at + timedelta(seconds=seq),
                    "details": {"reference": "R-7KQ2-91", "via": "get"},
                }  # fmt: skip
                values["prev_hash"] = prev
                values["hash"] = prev = entry_hash(_Row(**values), prev)
                rows.append(values)
            async with unit_of_work(resources.sessionmaker) as session:
                await session.execute(insert(AuditEntry), rows)
        async with unit_of_work(resources.sessionmaker) as session:
            head = await session.get(AuditChainHead, HEAD_ID)
            if head is None:
                session.add(AuditChainHead(id=HEAD_ID, seq=start + entries, hash=prev))
            else:
                head.seq, head.hash = start + entries, prev
    return prev


async def timed_verify(url: str, *, full: bool) -> tuple[float, int, bool]:
    settings = AuditSettings(database_url=url, internal_secret=SECRET, jwt_secret=SECRET)
    async with open_resources(settings) as resources:
        started = time.perf_counter()
        verdict = await verify(resources.sessionmaker, now=datetime.now(UTC), full=full)
        return time.perf_counter() - started, verdict.checked, verdict.ok


async def ingest(url: str, count: int) -> float:
    """Events per second through POST /internal/audit/events, in batches of 100."""
    settings = AuditSettings(
        database_url=url, internal_secret=SECRET, jwt_secret=SECRET, background_tasks=False
    )
    async with open_resources(settings) as resources:
        app = create_app(settings, resources=resources)
        async with app.router.lifespan_context(app):
            signer = ServiceTokenSigner(SECRET, service="triage_api", clock=SystemClock())
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://audit") as http:
                now = datetime.now(UTC).isoformat()
                started = time.perf_counter()
                for _ in range(0, count, 100):
                    events = [
                        {"id": new_event_id(), "type": "case.viewed", "source": "triage_api",
                         "occurred_at": now, "subject_id": new_id(),
                         "actor": {"sub": "crew-ne23", "role": "paramedic"},
                         "data": {"reference": "R-7KQ2-91", "via": "get"}}
                        for _ in range(100)
                    ]  # fmt: skip
                    response = await http.post(
                        "/internal/audit/events",
                        json={"events": events},
                        headers={"Authorization": f"Bearer {signer.token()}"},
                    )
                    response.raise_for_status()
                return count / (time.perf_counter() - started)


def run(backend: str, url: str, entries: int, ingest_count: int) -> None:
    migrate(url)
    head = asyncio.run(build(url, entries))
    full_s, checked, ok = asyncio.run(timed_verify(url, full=True))
    print(f"{backend:<10} full verify of {checked:>7} entries: {full_s:6.2f} s"
          f"  ({checked / full_s:8.0f} entries/s, ok={ok})")  # fmt: skip
    asyncio.run(build(url, 1000, start=entries, prev=head))
    inc_s, checked, ok = asyncio.run(timed_verify(url, full=False))
    print(
        f"{backend:<10} incremental verify, {checked} new entries: {inc_s * 1000:6.0f} ms (ok={ok})"
    )
    rate = asyncio.run(ingest(url, ingest_count))
    print(f"{backend:<10} ingest through the internal endpoint: {rate:7.0f} events/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--ingest", type=int, default=2000)
    args = parser.parse_args()
    print(machine_report())
    for backend, url in databases("verify"):
        run(backend, url, args.entries, args.ingest)


if __name__ == "__main__":
    main()
