"""Processes killed at random moments, and audit down for a minute, while crews submit
cases and consultants accept and advise them: afterwards every case has exactly one
consult, every event reached audit exactly once, the trail verifies, and no
Idempotency-Key made two cases."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests import support
from tests.faults.cluster import Cluster, running_cluster
from tests.faults.conftest import DeskConsultant, Hands
from tests.faults.ledger import Ledger, read_ledger
from tests.faults.load import Crew

SETTINGS = {
    "REACH_ROUTER_POLL_SECONDS": "0.5",
    "REACH_OUTBOX_POLL_SECONDS": "0.5",
    "REACH_OUTBOX_LEASE_SECONDS": "3",
    "REACH_OUTBOX_BASE_BACKOFF_SECONDS": "0.2",
    "REACH_OUTBOX_MAX_BACKOFF_SECONDS": "2",
    "REACH_OFFER_TIMEOUT_SECONDS": "4",
    "REACH_PRESENCE_HEARTBEAT_SECONDS": "1",
    "REACH_PRESENCE_STALE_SECONDS": "4",
    "REACH_CONSULT_LIMIT": "10",
}
COORDINATOR = support.auth("coordinator", "ops-1")
MIN_KILLS = 8


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def settle(
    cluster: Cluster, database_url: str, cases: set[str], desks: list[DeskConsultant]
) -> Ledger:
    """Wait (bounded) until every case is advised and every event has reached audit."""

    async def done() -> bool:
        advised: set[str] = set().union(*(desk.advised for desk in desks))
        if not cases <= advised:
            return False
        ledger = await read_ledger(database_url)
        return ledger.undelivered_to_audit == 0

    await support.eventually(done, timeout=180, interval=1.0, message=cluster.logs())
    return await read_ledger(database_url)


def assert_nothing_lost(ledger: Ledger, submitted: set[str]) -> None:
    assert ledger.cases == submitted, "a case was lost, or one nobody submitted appeared"
    assert max(ledger.keys.values()) == 1, "an idempotency key made two cases"
    assert set(ledger.consults_per_case) == submitted
    assert set(ledger.consults_per_case.values()) == {1}, "a case went to two consultants"
    assert ledger.dead == 0
    assert set(ledger.audited) == ledger.sent_to_audit, "an event never reached audit"
    assert set(ledger.audited.values()) == {1}, "an event was recorded twice"


async def full_verify(http: httpx.AsyncClient, cluster: Cluster) -> dict[str, object]:
    response = await http.get(
        f"{cluster.url('audit')}/v1/audit/verify", params={"full": "true"}, headers=COORDINATOR
    )
    assert response.status_code == 200, response.text
    verdict: dict[str, object] = response.json()
    return verdict


async def start_desks(
    http: httpx.AsyncClient, cluster: Cluster, names: list[str], stop: asyncio.Event
) -> tuple[list[DeskConsultant], list[asyncio.Task[None]]]:
    hands = Hands(http, {"consult-router": cluster.url("consult-router")})
    desks = []
    for name in names:
        await hands.consultant(name)
        desks.append(DeskConsultant(http, cluster.url("consult-router"), name))
    return desks, [asyncio.create_task(desk.run(stop)) for desk in desks]


async def test_kill_9_at_random_moments_loses_and_doubles_nothing(
    cluster_database: str, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    counts = {"triage-api": 2, "consult-router": 2, "audit": 1}
    chance = random.Random(20261124)
    async with running_cluster(cluster_database, tmp_path, counts, SETTINGS) as cluster:
        stop = asyncio.Event()
        desks, consultants = await start_desks(http, cluster, ["dr-a", "dr-b", "dr-c"], stop)
        crews = [Crew(http, cluster.url("triage-api"), crew_id=f"crew-{n}") for n in range(2)]
        load = [asyncio.create_task(crew.submit_many(100, interval=0.15)) for crew in crews]
        kills = 0
        try:
            # Kill while cases are submitted, and a few times more while they settle.
            while (not all(task.done() for task in load) or kills < MIN_KILLS) and kills < 40:
                await asyncio.sleep(chance.uniform(0.5, 2.0))
                victim = chance.choice(cluster.all_replicas())
                victim.kill()
                kills += 1
                await asyncio.sleep(chance.uniform(0.0, 1.0))
                victim.start()
                await victim.wait_ready()
            await asyncio.gather(*load)
            submitted = {case for crew in crews for case in crew.cases.values()}
            ledger = await settle(cluster, cluster_database, submitted, desks)
        finally:
            stop.set()
            for task in load:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*load, return_exceptions=True)
            await asyncio.gather(*consultants, return_exceptions=True)
        assert len(submitted) == 200
        assert_nothing_lost(ledger, submitted)
        verdict = await full_verify(http, cluster)
        assert verdict["ok"] is True, verdict


async def test_audit_down_for_a_minute_then_the_backlog_drains(
    cluster_database: str, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    counts = {"triage-api": 1, "consult-router": 1, "audit": 1}
    async with running_cluster(cluster_database, tmp_path, counts, SETTINGS) as cluster:
        stop = asyncio.Event()
        desks, consultants = await start_desks(http, cluster, ["dr-a"], stop)
        crew = Crew(http, cluster.url("triage-api"))
        (audit,) = cluster.replicas["audit"]
        try:
            audit.kill()
            loop = asyncio.get_running_loop()
            back_at = loop.time() + 60
            while loop.time() < back_at:
                await crew.submit()
                await asyncio.sleep(1.0)
            # With audit away, every case still reached a consultant and was advised.
            submitted = set(crew.cases.values())
            await support.eventually(
                lambda: submitted <= desks[0].advised, timeout=30, message=cluster.logs()
            )
            waiting = await read_ledger(cluster_database)
            assert waiting.undelivered_to_audit > 0
            assert not waiting.audited
            audit.start()
            await audit.wait_ready()
            ledger = await settle(cluster, cluster_database, submitted, desks)
        finally:
            stop.set()
            await asyncio.gather(*consultants, return_exceptions=True)
        assert len(submitted) >= 30
        assert_nothing_lost(ledger, submitted)
        assert (await full_verify(http, cluster))["ok"] is True
