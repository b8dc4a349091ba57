"""A crew's client under faults: submits cases and retries each with its own
Idempotency-Key until it is stored, as the paramedics' app does on a flaky network."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from dataclasses import dataclass, field

import httpx
from sqlalchemy.engine import make_url

from tests import support
from tests.factories import case_body, idempotency_key


@dataclass
class Crew:
    http: httpx.AsyncClient
    triage_url: str
    crew_id: str = "crew-1"
    cases: dict[str, str] = field(default_factory=dict)  # idempotency key -> case id
    retries: int = 0

    async def submit(self, *, deadline_seconds: float = 120.0) -> str:
        key = idempotency_key()
        loop = asyncio.get_running_loop()
        give_up = loop.time() + deadline_seconds
        while True:
            try:
                response = await self.http.post(
                    f"{self.triage_url}/v1/cases",
                    json=case_body(),
                    headers={**support.auth("paramedic", self.crew_id), "Idempotency-Key": key},
                )
                if response.status_code in (200, 201):
                    case_id: str = response.json()["id"]
                    self.cases[key] = case_id
                    return case_id
                # A 4xx other than "busy" would be our bug, not the fault's: stop at once.
                assert response.status_code in (502, 503, 504), response.text
            except httpx.HTTPError:
                pass
            if loop.time() > give_up:
                raise AssertionError("a case could not be submitted in time")
            self.retries += 1
            await asyncio.sleep(0.3)

    async def submit_many(self, count: int, *, interval: float) -> None:
        for _ in range(count):
            await self.submit()
            await asyncio.sleep(interval)


def postgres_control_available() -> bool:
    return shutil.which("pg_ctlcluster") is not None and shutil.which("pg_lsclusters") is not None


def postgres_cluster(action: str, database_url: str) -> None:
    """Stop or start the local PostgreSQL cluster serving `database_url` (Debian's
    pg_ctlcluster), found by its port."""
    port = make_url(database_url).port or 5432
    listing = subprocess.run(  # noqa: S603
        [_tool("pg_lsclusters"), "--no-header"], check=True, capture_output=True, text=True
    ).stdout
    clusters = [line.split() for line in listing.splitlines() if line.strip()]
    matches = [(version, name) for version, name, p, *_ in clusters if p == str(port)]
    assert matches, f"no local PostgreSQL cluster listens on port {port}"
    version, name = matches[0]
    command = [_tool("pg_ctlcluster"), "--skip-systemctl-redirect", version, name, action]
    if action == "stop":
        command += ["-m", "fast"]
    subprocess.run(command, check=True, capture_output=True, timeout=60)  # noqa: S603


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} is not installed"
    return path
