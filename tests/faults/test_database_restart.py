"""PostgreSQL restarted under load: replicas say they are not ready while it is down,
recover by themselves when it is back, and no case is lost or duplicated."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests import support
from tests.faults.cluster import Cluster, running_cluster
from tests.faults.conftest import DeskConsultant, Hands
from tests.faults.load import Crew, postgres_cluster, postgres_control_available

SETTINGS = {
    "REACH_ROUTER_POLL_SECONDS": "1",
    "REACH_OUTBOX_POLL_SECONDS": "0.5",
    "REACH_OUTBOX_MAX_BACKOFF_SECONDS": "2",
    "REACH_OFFER_TIMEOUT_SECONDS": "5",
    "REACH_PRESENCE_HEARTBEAT_SECONDS": "1",
    "REACH_PRESENCE_STALE_SECONDS": "5",
    "REACH_CONSULT_LIMIT": "10",
}


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def readiness(cluster: Cluster, http: httpx.AsyncClient) -> list[int]:
    codes = []
    for replica in cluster.all_replicas():
        try:
            codes.append((await http.get(replica.url + "/readyz", timeout=8)).status_code)
        except httpx.HTTPError:
            codes.append(0)
    return codes


@pytest.mark.alone  # every other test's PostgreSQL goes down with it
@pytest.mark.skipif(
    not postgres_control_available(), reason="pg_ctlcluster is not available to restart PostgreSQL"
)
async def test_a_database_restart_under_load_loses_nothing(
    cluster_database: str, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    counts = {"triage-api": 2, "consult-router": 2}
    async with running_cluster(cluster_database, tmp_path, counts, SETTINGS) as cluster:
        hands = Hands(http, {name: cluster.url(name) for name in counts})
        await hands.consultant("dr-a")
        desk = DeskConsultant(http, cluster.url("consult-router"), "dr-a")
        crew = Crew(http, cluster.url("triage-api"))
        stop = asyncio.Event()
        consultant = asyncio.create_task(desk.run(stop))
        load = asyncio.create_task(crew.submit_many(40, interval=0.1))
        try:
            await support.eventually(lambda: len(crew.cases) >= 10, timeout=60)
            postgres_cluster("stop", cluster_database)
            try:
                await support.eventually(
                    lambda: _all_not_ready(cluster, http), timeout=30, interval=0.2,
                    message="replicas kept saying ready without their database",
                )  # fmt: skip
            finally:
                postgres_cluster("start", cluster_database)
            await support.eventually(
                lambda: _all_ready(cluster, http), timeout=60, interval=0.5,
                message="replicas did not recover by themselves",
            )  # fmt: skip
            await asyncio.wait_for(load, timeout=180)

            async def every_case_advised() -> bool:
                return set(crew.cases.values()) <= desk.advised

            await support.eventually(every_case_advised, timeout=120, interval=0.5)
        finally:
            stop.set()
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load
            await asyncio.wait_for(consultant, timeout=15)
        assert len(crew.cases) == 40
        assert crew.retries > 0, "no submission met the outage: the test proved nothing"
        assert len(set(crew.cases.values())) == 40, "an idempotency key made two cases"

        async def the_crews_see_the_advice() -> bool:
            # The router's word reaches triage_api through its outbox: soon, not at once.
            cases = [await hands.case(case_id) for case_id in crew.cases.values()]
            return all(case["status"] == "advised" for case in cases)

        await support.eventually(the_crews_see_the_advice, timeout=60, interval=0.5)
        for case_id in crew.cases.values():
            assert (await hands.case(case_id))["assigned_consultant"]["id"] == "dr-a"


async def _all_not_ready(cluster: Cluster, http: httpx.AsyncClient) -> bool:
    return all(code == 503 for code in await readiness(cluster, http))


async def _all_ready(cluster: Cluster, http: httpx.AsyncClient) -> bool:
    return all(code == 200 for code in await readiness(cluster, http))
