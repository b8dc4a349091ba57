"""`reach demo`: a rota on shift now, synthetic cases at a chosen rate, simulated
consultants — so the dashboard, the crews' streams, the reports and the metrics all move.

It talks to a running reach over the public API, like any client. With nothing answering
at `--url`, it starts the embedded default itself, in this process. One demo consultant
is never simulated: sign in as them on the dashboard and take cases yourself.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from services.demo.actors import Pace, SimulatedConsultant, Tally, auth, crew_case
from services.demo.cases import synthetic_case
from services.shared.auth import mint_token
from services.shared.clock import SystemClock

logger = logging.getLogger("reach.demo")

# (id, name, specialties); the first is left for a person at the dashboard.
CONSULTANTS: list[tuple[str, str, list[str]]] = [
    ("dr-okafor", "Dr Amara Okafor", ["frailty", "emergency_medicine"]),
    ("dr-patel", "Dr Rohan Patel", ["acute_medicine", "frailty"]),
    ("dr-nowak", "Dr Ewa Nowak", ["cardiology", "acute_medicine"]),
    ("dr-adeyemi", "Dr Tolu Adeyemi", ["mental_health"]),
    ("dr-chen", "Dr Wei Chen", ["emergency_medicine", "stroke", "surgery"]),
    ("dr-hughes", "Dr Sian Hughes", ["emergency_medicine", "frailty"]),
]


@dataclass
class DemoOptions:
    url: str
    rate_per_hour: float
    duration_seconds: float
    simulate_consultants: bool
    seed: int
    speed: float
    jwt_secret: str


@dataclass
class DemoResult:
    tally: Tally
    consistency: dict[str, Any]


def token_factory(secret: str) -> Any:
    def token(role: str, sub: str, name: str) -> str:
        return mint_token(secret, sub=sub, role=role, name=name, clock=SystemClock())

    return token


async def seed_rota(http: httpx.AsyncClient, token: Any) -> None:
    """The demo consultants, on shift from an hour ago for twelve hours (kept if already
    on shift: running the demo twice adds nothing)."""
    admin = auth(token("admin", "demo-admin", "Demo admin"))
    now = datetime.now(UTC)
    for consultant_id, name, specialties in CONSULTANTS:
        body = {"name": name, "grade": "consultant", "specialties": specialties}
        (
            await http.put(f"/v1/consultants/{consultant_id}", json=body, headers=admin)
        ).raise_for_status()
        for specialty in specialties:
            on_call = (
                await http.get("/v1/oncall", params={"specialty": specialty}, headers=admin)
            ).json()
            if any(entry["consultant"]["id"] == consultant_id for entry in on_call["on_call"]):
                continue
            shift = {
                "consultant_id": consultant_id, "specialty": specialty,
                "starts_at": (now - timedelta(hours=1)).isoformat(),
                "ends_at": (now + timedelta(hours=12)).isoformat(),
            }  # fmt: skip
            (await http.post("/v1/shifts", json=shift, headers=admin)).raise_for_status()


async def run_demo(options: DemoOptions) -> DemoResult:
    rng = random.Random(options.seed)  # noqa: S311 - synthetic data, not security
    token = token_factory(options.jwt_secret)
    pace = Pace(options.speed)
    tally = Tally()
    stop = asyncio.Event()
    started = datetime.now(UTC)
    async with httpx.AsyncClient(base_url=options.url, timeout=15) as http:
        await seed_rota(http, token)
        ws_url = options.url.replace("http://", "ws://").replace("https://", "wss://")
        consultants = []
        if options.simulate_consultants:
            consultants = [
                asyncio.create_task(
                    SimulatedConsultant(cid, name, http, ws_url, token, random.Random(rng.random()),  # noqa: S311
                                        pace, tally).run(stop)
                )
                for cid, name, _ in CONSULTANTS[1:]
            ]  # fmt: skip
        crews: list[asyncio.Task[None]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + options.duration_seconds
        number = 0
        while loop.time() < deadline:
            number += 1
            case = synthetic_case(rng, number)
            crews.append(asyncio.create_task(
                crew_case(http, case, token=token, rng=random.Random(rng.random()), pace=pace,  # noqa: S311
                          tally=tally, stop=stop)
            ))  # fmt: skip
            # Arrivals at random, `rate` an hour on average.
            gap = rng.expovariate(options.rate_per_hour / 3600.0)
            await asyncio.sleep(min(gap, max(0.0, deadline - loop.time())))
        stop.set()
        for task in crews + consultants:
            task.cancel()
        await asyncio.gather(*crews, *consultants, return_exceptions=True)
        consistency = await check_consistency(http, token, tally, since=started)
    return DemoResult(tally=tally, consistency=consistency)


async def check_consistency(
    http: httpx.AsyncClient, token: Any, tally: Tally, *, since: datetime
) -> dict[str, Any]:
    """After the run: every submitted case has a disposition or is still open, no case
    has two consultants, the audit trail verifies, and the report counts what happened."""
    coordinator = auth(token("coordinator", "demo-check", "Demo check"))
    statuses: dict[str, str] = {}
    consultants: dict[str, str | None] = {}
    for case_id, crew in tally.submitted.items():
        case = (
            await http.get(f"/v1/cases/{case_id}", headers=auth(token("paramedic", crew, crew)))
        ).json()
        statuses[case_id] = case["status"]
        consultants[case_id] = (case.get("assigned_consultant") or {}).get("id")
    decided = {c for c, s in statuses.items() if s in ("advised", "closed")}
    cancelled = sum(1 for s in statuses.values() if s == "cancelled")
    open_ = {c for c, s in statuses.items() if s in ("queued", "offered", "accepted")}
    queue = (await http.get("/v1/queue", headers=coordinator)).json()
    queued_ids = {item["case_id"] for item in queue["items"]}

    async def audit_caught_up() -> dict[str, Any]:
        report: dict[str, Any] = {}
        for _ in range(60):
            report = (
                await http.get(
                    "/v1/reports/redirection",
                    params={"from": (since - timedelta(minutes=1)).isoformat(),
                            "to": (datetime.now(UTC) + timedelta(minutes=1)).isoformat()},
                    headers=coordinator,
                )
            ).json()  # fmt: skip
            if sum(report["total"]["dispositions"].values()) >= len(decided):
                break
            await asyncio.sleep(0.5)
        return report

    report = await audit_caught_up()
    verdict = (
        await http.get("/v1/audit/verify", params={"full": "true"}, headers=coordinator)
    ).json()
    return {
        "submitted": len(statuses),
        "decided": len(decided),
        "open": len(open_),
        "cancelled": cancelled,
        "every_case_accounted_for": len(decided) + len(open_) + cancelled == len(statuses),
        "open_cases_in_queue_or_held": all(
            c in queued_ids or statuses[c] == "accepted" for c in open_
        ),
        "report_dispositions": sum(report["total"]["dispositions"].values()),
        "report_matches": sum(report["total"]["dispositions"].values()) == len(decided),
        "redirection_rate": report["total"]["redirection_rate"],
        "trail_verifies": verdict["ok"],
        "trail_entries": verdict["events"],
    }  # fmt: skip


async def reachable(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            return (await http.get(url + "/healthz")).status_code == 200
    except httpx.HTTPError:
        return False
