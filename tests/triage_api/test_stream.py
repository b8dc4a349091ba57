"""The crew's live stream over a real uvicorn on 127.0.0.1, driven by the `websockets`
client: replay from `after`, live events, reconnection, auth and bad messages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from services.embedded import EmbeddedSettings
from services.shared.db.models import TriageCase, TriageOutbox
from services.shared.db.session import unit_of_work
from services.shared.domain.vocabulary import CaseEventType
from services.shared.resources import Resources
from services.shared.schemas.events import EventType
from services.triage_api import repository
from services.triage_api.app import create_app
from services.triage_api.context import TriageContext
from tests.factories import NORMAL_OBSERVATIONS, case_body, idempotency_key
from tests.support import (
    SocketStorm,
    auth,
    errors_when_leaving_before_hello,
    eventually,
    freed_without_the_collector,
    running_server,
    statements_sent,
    token,
)

CREW = auth("paramedic", "crew-ne23")


@pytest.fixture
async def server(settings: EmbeddedSettings, resources: Resources) -> AsyncIterator[str]:
    app: FastAPI = create_app(settings, resources=resources)
    async with running_server(app) as address:
        yield address


@pytest.fixture
async def client(server: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://{server}") as http_client:
        yield http_client


async def new_case(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.post(
        "/v1/cases", json=case_body(), headers={**CREW, "Idempotency-Key": idempotency_key()}
    )
    case: dict[str, Any] = response.json()
    return case


async def next_message(socket: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(socket.recv(), timeout))
    return message


async def close_code(socket: ClientConnection) -> int:
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(socket.recv(), 5)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def record_observations(client: httpx.AsyncClient, case_id: str, pulse: int) -> None:
    response = await client.post(
        f"/v1/cases/{case_id}/observations",
        json={**NORMAL_OBSERVATIONS, "pulse": pulse},
        headers=CREW,
    )
    assert response.status_code == 200


class TestReplayAndLive:
    async def test_replays_the_past_then_streams_live_events(
        self, server: str, client: httpx.AsyncClient
    ) -> None:
        case = await new_case(client)
        async with connect(f"ws://{server}/v1/cases/{case['id']}/stream") as socket:
            await socket.send(
                json.dumps({"type": "hello", "token": token("paramedic", "crew-ne23")})
            )
            queued = await next_message(socket)
            assert (queued["seq"], queued["type"]) == (1, "queued")
            await record_observations(client, case["id"], pulse=120)
            live = await next_message(socket)
            assert (live["seq"], live["type"]) == (2, "observations_updated")
            assert live["data"]["news2"]["subscores"]["pulse"] == 2

    @pytest.mark.parametrize("after", [-1, 2**63, "3", 1.5])
    async def test_an_after_that_is_no_sequence_number_closes_with_policy(
        self, server: str, client: httpx.AsyncClient, after: object
    ) -> None:
        case = await new_case(client)
        async with connect(f"ws://{server}/v1/cases/{case['id']}/stream") as socket:
            hello = {"type": "hello", "token": token("paramedic", "crew-ne23"), "after": after}
            await socket.send(json.dumps(hello))
            assert await close_code(socket) == 1008

    async def test_a_client_that_reconnects_with_its_last_seq_misses_nothing(
        self, server: str, client: httpx.AsyncClient
    ) -> None:
        case = await new_case(client)
        url = f"ws://{server}/v1/cases/{case['id']}/stream"
        hello = {"type": "hello", "token": token("paramedic", "crew-ne23")}
        seen: list[dict[str, Any]] = []
        async with connect(url) as socket:
            await socket.send(json.dumps(hello))
            seen.append(await next_message(socket))
        for pulse in (95, 115, 135):  # while the crew is in a tunnel
            await record_observations(client, case["id"], pulse=pulse)
        async with connect(url) as socket:
            await socket.send(json.dumps({**hello, "after": seen[-1]["seq"]}))
            for _ in range(3):
                seen.append(await next_message(socket))
            await record_observations(client, case["id"], pulse=80)
            seen.append(await next_message(socket))
        assert [m["seq"] for m in seen] == [1, 2, 3, 4, 5]
        polled = (await client.get(f"/v1/cases/{case['id']}/events", headers=CREW)).json()
        assert polled["items"] == seen

    async def test_header_authentication_and_after_in_the_query(
        self, server: str, client: httpx.AsyncClient
    ) -> None:
        case = await new_case(client)
        await record_observations(client, case["id"], pulse=100)
        async with connect(
            f"ws://{server}/v1/cases/{case['id']}/stream?after=1", additional_headers=CREW
        ) as socket:
            message = await next_message(socket)
            assert (message["seq"], message["type"]) == (2, "observations_updated")

    async def test_a_coordinator_may_watch_any_case(
        self, server: str, client: httpx.AsyncClient
    ) -> None:
        case = await new_case(client)
        async with connect(f"ws://{server}/v1/cases/{case['id']}/stream") as socket:
            await socket.send(json.dumps({"type": "hello", "token": token("coordinator", "ops")}))
            assert (await next_message(socket))["type"] == "queued"


class TestRefusals:
    async def test_a_client_gone_before_its_hello_is_no_error(
        self, settings: EmbeddedSettings, resources: Resources,
        caplog: pytest.LogCaptureFixture,
    ) -> None:  # fmt: skip
        app = create_app(settings, resources=resources)
        path = "/v1/cases/any-case/stream"
        assert await errors_when_leaving_before_hello(app, path, lambda: caplog.records) == []

    async def test_no_hello_in_time_closes_4401(
        self, server: str, client: httpx.AsyncClient
    ) -> None:
        case = await new_case(client)
        async with connect(f"ws://{server}/v1/cases/{case['id']}/stream") as socket:
            assert await close_code(socket) == 4401

    @pytest.mark.parametrize(
        "hello",
        [
            {"type": "hello", "token": "forged"},
            {"type": "hello"},
            {"type": "ping"},
            "not json",
        ],
    )
    async def test_a_bad_hello_closes_4401(
        self, server: str, client: httpx.AsyncClient, hello: Any
    ) -> None:
        case = await new_case(client)
        async with connect(f"ws://{server}/v1/cases/{case['id']}/stream") as socket:
            await socket.send(hello if isinstance(hello, str) else json.dumps(hello))
            assert await close_code(socket) == 4401

    async def test_the_wrong_role_closes_4403(self, server: str, client: httpx.AsyncClient) -> None:
        case = await new_case(client)
        async with connect(f"ws://{server}/v1/cases/{case['id']}/stream") as socket:
            await socket.send(json.dumps({"type": "hello", "token": token("consultant", "dr-a")}))
            assert await close_code(socket) == 4403

    async def test_another_crews_case_closes_4404(
        self, server: str, client: httpx.AsyncClient
    ) -> None:
        case = await new_case(client)
        async with connect(f"ws://{server}/v1/cases/{case['id']}/stream") as socket:
            await socket.send(json.dumps({"type": "hello", "token": token("paramedic", "crew-x")}))
            assert await close_code(socket) == 4404


class TestMessages:
    async def test_ping_pong_and_bad_messages_keep_the_connection(
        self, server: str, client: httpx.AsyncClient
    ) -> None:
        case = await new_case(client)
        async with connect(f"ws://{server}/v1/cases/{case['id']}/stream") as socket:
            await socket.send(
                json.dumps({"type": "hello", "token": token("paramedic", "crew-ne23")})
            )
            assert (await next_message(socket))["type"] == "queued"
            await socket.send(json.dumps({"type": "ping"}))
            assert await next_message(socket) == {"type": "pong"}
            await socket.send("{not json")
            assert (await next_message(socket))["error"] == "malformed_message"
            await socket.send(json.dumps({"type": "ping", "padding": "x" * 70_000}))
            assert (await next_message(socket))["error"] == "message_too_large"
            await socket.send(json.dumps({"type": "accept"}))
            assert (await next_message(socket))["error"] == "unsupported_message"
            await record_observations(client, case["id"], pulse=99)
            assert (await next_message(socket))["type"] == "observations_updated"


class TestReconnectionStorm:
    async def test_a_crew_waiting_its_turn_stays_alive_and_is_answered_in_order(
        self, settings: EmbeddedSettings, resources: Resources
    ) -> None:
        # As for the dashboards: the stream's opening read waits behind a storm of other
        # sockets, and the server's keep-alive (made short here) must not end it meanwhile.
        app = create_app(settings, resources=resources)
        async with (
            running_server(app, ws_ping_interval=0.1, ws_ping_timeout=0.3) as address,
            httpx.AsyncClient(base_url=f"http://{address}") as http,
        ):
            case = await new_case(http)
            storm = SocketStorm(resources.socket_reads, 20)
            await eventually(lambda: resources.socket_reads.waiting > 0)
            async with await open_stream(address, case["id"]) as socket:
                await socket.send(json.dumps({"type": "ping"}))
                await asyncio.sleep(1.0)  # several keep-alive rounds
                await storm.end()
                first, second = await next_message(socket), await next_message(socket)
                assert {first["type"], second["type"]} == {"queued", "pong"}


# The streams' safety-net loop, pushed out of the test's way.
_LOOKS_BY_HAND = {"stream_poll_seconds": 3600.0}


class TestLostWakeUps:
    async def test_the_stream_watch_sends_an_event_whose_wake_up_was_lost_and_reads_no_more(
        self, settings: EmbeddedSettings, resources: Resources
    ) -> None:
        # One look at the cases for every crew stream of the process (no stream polls on
        # its own); only the stream that is behind reads its events. The test makes the
        # looks itself: one from the process's loop during a read would add a read.
        app = create_app(settings.model_copy(update=_LOOKS_BY_HAND), resources=resources)
        async with (
            running_server(app) as address,
            httpx.AsyncClient(base_url=f"http://{address}") as http,
        ):
            ctx: TriageContext = app.state.triage
            behind_case, current_case = await new_case(http), await new_case(http)
            with statements_sent(resources.engine, _reads_events) as reads:
                behind = await open_stream(address, behind_case["id"])
                current = await open_stream(address, current_case["id"])
                async with behind, current:
                    queued = await next_message(behind), await next_message(current)
                    assert [message["type"] for message in queued] == ["queued", "queued"]
                    assert len(reads) == 2  # each replays once
                    # Written by another process whose notification never came.
                    async with unit_of_work(resources.sessionmaker) as session:
                        case = await session.get_one(TriageCase, behind_case["id"])
                        await repository.append_event(
                            session, case, type=CaseEventType.OFFERED, at=case.updated_at,
                            data={"status": "offered"},
                        )  # fmt: skip
                        lost_seq = case.event_seq
                    await ctx.stream_watch.look(resources.sessionmaker)
                    event = await next_message(behind)
                    await current.send(json.dumps({"type": "ping"}))
                    assert (await next_message(current))["type"] == "pong"
                    await ctx.stream_watch.look(resources.sessionmaker)  # nobody behind now
                    await behind.send(json.dumps({"type": "ping"}))
                    assert (await next_message(behind))["type"] == "pong"
        assert (event["type"], event["seq"]) == ("offered", lost_seq)
        assert len(reads) == 3  # the two replays, then the stream that was behind, once

    async def test_a_stream_replaying_behind_a_storm_is_not_woken_to_read_it_again(
        self, settings: EmbeddedSettings, resources: Resources
    ) -> None:
        # A look while the replay waits its turn finds the stream behind (it has sent
        # nothing yet); were it watched, it would read everything twice.
        app = create_app(settings, resources=resources)
        turns = resources.socket_reads
        async with (
            running_server(app) as address,
            httpx.AsyncClient(base_url=f"http://{address}") as http,
        ):
            ctx: TriageContext = app.state.triage
            case = await new_case(http)
            with statements_sent(resources.engine, _reads_events) as reads:
                first_storm = SocketStorm(turns, turns.at_once)
                async with await open_stream(address, case["id"]) as socket:
                    await eventually(lambda: turns.waiting == 1)  # the opening read
                    second_storm = SocketStorm(turns, turns.at_once)
                    await eventually(lambda: turns.waiting == 1 + turns.at_once)
                    await first_storm.end()
                    # The opening is done (its read is audited); the replay waits.
                    await eventually(lambda: _stream_reads_audited(resources))
                    await eventually(lambda: turns.waiting == 1)
                    await ctx.stream_watch.look(resources.sessionmaker)
                    await second_storm.end()
                    assert (await next_message(socket))["type"] == "queued"
                    await socket.send(json.dumps({"type": "ping"}))
                    assert (await next_message(socket))["type"] == "pong"
        assert len(reads) == 1


class TestTeardown:
    async def test_a_stream_the_crew_closes_is_freed_at_once(
        self, server: str, client: httpx.AsyncClient
    ) -> None:
        case = await new_case(client)

        async def opened() -> ClientConnection:
            socket = await open_stream(server, case["id"])
            assert (await next_message(socket))["type"] == "queued"
            return socket

        await freed_without_the_collector(opened, lambda socket: socket.close())


async def open_stream(address: str, case_id: str) -> ClientConnection:
    socket = await connect(f"ws://{address}/v1/cases/{case_id}/stream")
    await socket.send(json.dumps({"type": "hello", "token": token("paramedic", "crew-ne23")}))
    return socket


def _reads_events(statement: str) -> bool:
    return statement.lstrip().upper().startswith("SELECT") and "FROM triage_case_event" in statement


async def _stream_reads_audited(resources: Resources) -> bool:
    async with unit_of_work(resources.sessionmaker) as session:
        viewed = await session.scalar(
            select(func.count()).where(TriageOutbox.event_type == EventType.CASE_VIEWED)
        )
    return bool(viewed)
