"""Two replicas each of triage_api and consult_router on one PostgreSQL, as separate
processes: events caused on one replica reach sockets on another at once, and a router
replica killed with offers outstanding loses no case."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests import support
from tests.faults.cluster import running_cluster
from tests.faults.conftest import Hands, consultant_socket, next_of

# The safety-net polls are far longer than any wait below: whatever arrives in time was
# carried by a wake-up (LISTEN/NOTIFY) across processes, not found by a poll.
SLOW_POLLS = {"REACH_ROUTER_POLL_SECONDS": "60", "REACH_OUTBOX_POLL_SECONDS": "60"}
WAKE_UP_BOUND_SECONDS = 15.0


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def test_a_case_posted_to_one_replica_is_offered_on_another_at_once(
    cluster_database: str, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    counts = {"triage-api": 2, "consult-router": 2}
    async with running_cluster(cluster_database, tmp_path, counts, SLOW_POLLS) as cluster:
        hands = Hands(http, {name: cluster.url(name) for name in counts})
        await hands.consultant("dr-a")
        router_a, router_b = cluster.replicas["consult-router"]
        triage_a, triage_b = cluster.replicas["triage-api"]
        # The consultant is on router A; the crew posts to triage B, whose events reach
        # router B only. Router B makes the offer; router A's socket must hear of it.
        cluster.balancers["consult-router"].backends = [router_b.port]
        cluster.balancers["triage-api"].backends = [triage_b.port]
        async with await consultant_socket(router_a.url, "dr-a") as socket:
            case_id = await hands.submit()
            offer = await next_of(socket, "offer", timeout=WAKE_UP_BOUND_SECONDS)
            assert offer["case"]["reference"] == (await hands.case(case_id))["reference"]
            await socket.send(json.dumps({"type": "accept", "offer_id": offer["offer_id"]}))
            assigned = await next_of(socket, "assigned", timeout=WAKE_UP_BOUND_SECONDS)
            assert assigned["case"]["id"] == case_id
        # ...and the crew's case, on triage A, shows the acceptance too.
        cluster.balancers["triage-api"].backends = [triage_a.port]

        async def accepted() -> bool:
            return bool((await hands.case(case_id))["status"] == "accepted")

        await support.eventually(accepted, timeout=WAKE_UP_BOUND_SECONDS, message=cluster.logs())


async def test_killing_a_router_replica_with_offers_outstanding_loses_no_case(
    cluster_database: str, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    settings = {
        "REACH_ROUTER_POLL_SECONDS": "1",
        "REACH_OFFER_TIMEOUT_SECONDS": "3",
        "REACH_PRESENCE_HEARTBEAT_SECONDS": "1",
        "REACH_PRESENCE_STALE_SECONDS": "3",
        "REACH_CONSULT_LIMIT": "10",
        "REACH_OUTBOX_POLL_SECONDS": "1",
    }
    counts = {"triage-api": 2, "consult-router": 2}
    async with running_cluster(cluster_database, tmp_path, counts, settings) as cluster:
        hands = Hands(http, {name: cluster.url(name) for name in counts})
        await hands.consultant("dr-doomed")
        await hands.consultant("dr-steady")
        router_a, router_b = cluster.replicas["consult-router"]
        doomed = await consultant_socket(router_a.url, "dr-doomed")
        steady = await consultant_socket(router_b.url, "dr-steady")
        cases = [await hands.submit() for _ in range(6)]
        # dr-doomed never answers: their offers are outstanding when their replica dies.
        await next_of(doomed, "offer", timeout=WAKE_UP_BOUND_SECONDS)
        router_a.kill()
        cluster.balancers["consult-router"].backends = [router_b.port]
        accepted: set[str] = set()

        async def accept_everything() -> None:
            while len(accepted) < len(cases):
                offer = await next_of(steady, "offer", timeout=30)
                await steady.send(json.dumps({"type": "accept", "offer_id": offer["offer_id"]}))
                assigned = await next_of(steady, "assigned", timeout=10)
                accepted.add(assigned["case"]["id"])

        async with steady:
            await asyncio.wait_for(accept_everything(), timeout=90)
        assert accepted == set(cases)

        async def crews_see_dr_steady() -> bool:
            # The router's acceptances reach triage_api through its outbox: soon, not at once.
            # A read the test's balancer drops (a replica busy past its keep-alive on a
            # loaded machine) is asked again; what must hold within the limit is the answer.
            try:
                seen = [(await hands.case(case_id))["assigned_consultant"] for case_id in cases]
            except httpx.TransportError:
                return False
            return all(who is not None and who["id"] == "dr-steady" for who in seen)

        await support.eventually(crews_see_dr_steady, timeout=30, message="not all assigned")
        await doomed.close()
