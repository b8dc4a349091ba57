"""Where the peer services are, and how one service posts events to another.

Every call goes through the app's one `httpx.AsyncClient`. In the embedded default that
client's transport is the embedded app itself (`httpx.ASGITransport`), so events between
the services never leave the process; split, it is loopback or cluster HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import httpx

from services.shared.auth import ServiceTokenSigner
from services.shared.jsoncodec import json_bytes
from services.shared.schemas.events import EventBatchResult


class Peer(StrEnum):
    TRIAGE_API = "triage_api"
    CONSULT_ROUTER = "consult_router"
    AUDIT = "audit"


# Each service's internal endpoint for events from its peers. Internal paths are never
# routed by the public ingress.
EVENTS_PATH: Mapping[Peer, str] = {
    Peer.TRIAGE_API: "/internal/triage/events",
    Peer.CONSULT_ROUTER: "/internal/router/events",
    Peer.AUDIT: "/internal/audit/events",
}

EMBEDDED_BASE_URL = "http://reach.embedded"


class PeerUnavailable(Exception):
    """A peer could not be reached or did not answer usefully; the caller retries later."""


class PeerDirectory:
    def __init__(self, base_urls: Mapping[Peer, str]) -> None:
        self._base_urls = {peer: url.rstrip("/") for peer, url in base_urls.items()}

    @classmethod
    def embedded(cls) -> PeerDirectory:
        return cls(dict.fromkeys(Peer, EMBEDDED_BASE_URL))

    def base_url(self, peer: Peer) -> str:
        try:
            return self._base_urls[peer]
        except KeyError:
            raise PeerUnavailable(f"no URL is configured for {peer}") from None

    def knows(self, peer: Peer) -> bool:
        return peer in self._base_urls


class PeerClient:
    """Service-to-service calls, authenticated with the internal service token."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        directory: PeerDirectory,
        signer: ServiceTokenSigner,
        *,
        timeout_seconds: float,
    ) -> None:
        self._client = client
        self._directory = directory
        self._signer = signer
        self._timeout = timeout_seconds

    async def post_events(self, peer: Peer, events: list[dict[str, Any]]) -> EventBatchResult:
        url = self._directory.base_url(peer) + EVENTS_PATH[peer]
        try:
            # httpx's timeouts bound each read and write; this bounds the whole exchange,
            # so a peer that trickles its answer cannot hold the delivery loop.
            async with asyncio.timeout(self._timeout):
                response = await self._client.post(
                    url,
                    content=json_bytes({"events": events}),
                    headers={
                        "Authorization": f"Bearer {self._signer.token()}",
                        "Content-Type": "application/json",
                    },
                    timeout=self._timeout,
                )
        except TimeoutError as exc:
            raise PeerUnavailable(f"{peer} did not answer in {self._timeout}s") from exc
        except httpx.HTTPError as exc:
            raise PeerUnavailable(f"{peer} did not answer ({type(exc).__name__})") from exc
        if response.status_code != httpx.codes.OK:
            raise PeerUnavailable(f"{peer} answered {response.status_code}")
        try:
            return EventBatchResult.model_validate_json(response.content)
        except ValueError as exc:
            raise PeerUnavailable(f"{peer} answered something that is not a result") from exc
