"""The demo's people, as clients of the public API: crews who submit cases, send worse
observations when a patient deteriorates and acknowledge the advice; consultants who
accept and advise after human-like pauses."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from services.demo.cases import SyntheticCase, worse

logger = logging.getLogger("reach.demo")

Token = Callable[[str, str, str], str]

# Where consultants send patients in schemes like REACH: about two-thirds avoid the ED.
OUTCOMES: list[tuple[str, str | None, int]] = [
    ("convey_ed", None, 34),
    ("redirect", "sdec", 14), ("redirect", "falls", 10),
    ("redirect", "urgent_community_response", 10), ("redirect", "utc", 6),
    ("redirect", "mental_health", 5), ("redirect", "frailty", 5),
    ("home", "gp", 10), ("home", None, 6),
]  # fmt: skip


@dataclass
class Tally:
    submitted: dict[str, str] = field(default_factory=dict)  # case id -> crew
    advised: set[str] = field(default_factory=set)
    acknowledged: set[str] = field(default_factory=set)
    deteriorated: int = 0
    errors: int = 0


@dataclass
class Pace:
    """Human pauses, compressed by `speed` (10 = ten times faster)."""

    speed: float = 1.0

    async def pause(self, rng: random.Random, low: float, high: float) -> None:
        await asyncio.sleep(rng.uniform(low, high) / self.speed)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def crew_case(
    http: httpx.AsyncClient,
    case: SyntheticCase,
    *,
    token: Token,
    rng: random.Random,
    pace: Pace,
    tally: Tally,
    stop: asyncio.Event,
) -> None:
    """One crew's case: submit, maybe deteriorate, wait for advice, acknowledge."""
    headers = auth(token("paramedic", case.crew, case.crew.upper()))
    key = f"demo-{rng.getrandbits(64):016x}"
    response = await http.post(
        "/v1/cases", json=case.body, headers={**headers, "Idempotency-Key": key}
    )
    if response.status_code not in (200, 201):
        tally.errors += 1
        logger.warning("a demo case was refused (%s)", response.status_code)
        return
    case_id: str = response.json()["id"]
    tally.submitted[case_id] = case.crew
    sent_worse = False
    while not stop.is_set():
        await pace.pause(rng, 4, 8)
        current = (await http.get(f"/v1/cases/{case_id}", headers=headers)).json()
        if current["status"] in ("queued", "offered") and case.deteriorates and not sent_worse:
            sent_worse = True
            tally.deteriorated += 1
            await http.post(f"/v1/cases/{case_id}/observations", json=worse(rng), headers=headers)
        if current["status"] == "advised":
            await pace.pause(rng, 5, 20)
            followed = rng.random() < 0.9
            body = {"followed": followed, "reason": None if followed else "Patient declined"}
            await http.post(f"/v1/cases/{case_id}/acknowledge", json=body, headers=headers)
            tally.acknowledged.add(case_id)
            return
        if current["status"] in ("closed", "cancelled"):
            return


@dataclass
class SimulatedConsultant:
    consultant_id: str
    name: str
    http: httpx.AsyncClient
    ws_url: str
    token: Token
    rng: random.Random
    pace: Pace
    tally: Tally

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._session(stop)
            except (ConnectionClosed, InvalidStatus, OSError, TimeoutError):
                await asyncio.sleep(1.0)

    async def _session(self, stop: asyncio.Event) -> None:
        token = self.token("consultant", self.consultant_id, self.name)
        async with connect(self.ws_url + "/v1/consultant/stream", open_timeout=10) as socket:
            await socket.send(json.dumps({"type": "hello", "token": token}))
            await socket.send(json.dumps({"type": "status", "status": "available"}))
            while not stop.is_set():
                try:
                    message = json.loads(await asyncio.wait_for(socket.recv(), 1.0))
                except TimeoutError:
                    continue
                if message["type"] == "welcome":
                    for consult in message["consults"]:
                        if consult["status"] == "accepted":
                            await self._advise(consult["consult_id"], consult["case"])
                    for offer in message["offers"]:
                        await self._consider(socket, offer)
                elif message["type"] == "offer":
                    await self._consider(socket, message)
                elif message["type"] == "assigned":
                    await self._advise(message["consult_id"], message["case"])

    async def _consider(self, socket: Any, offer: dict[str, Any]) -> None:
        await self.pace.pause(self.rng, 3, 15)
        if self.rng.random() < 0.1:
            decline = {"type": "decline", "offer_id": offer["offer_id"], "reason": "on a call"}
            await socket.send(json.dumps(decline))
        else:
            await socket.send(json.dumps({"type": "accept", "offer_id": offer["offer_id"]}))

    async def _advise(self, consult_id: str, case: dict[str, Any]) -> None:
        await self.pace.pause(self.rng, 30, 120)
        disposition, pathway, _ = self.rng.choices(OUTCOMES, weights=[o[2] for o in OUTCOMES])[0]
        body = {
            "disposition": disposition,
            "pathway": pathway,
            "advice": "Demo advice: plan agreed with the crew.",
            "safety_netting": "Demo safety-netting: call 999 if worse.",
            "confirm_risk_override": True,
        }
        headers = auth(self.token("consultant", self.consultant_id, self.name))
        response = await self.http.post(
            f"/v1/consults/{consult_id}/advice", json=body, headers=headers
        )
        if response.status_code == 200:
            self.tally.advised.add(case["id"])
