"""The consultants' websocket over a real uvicorn on 127.0.0.1, with the routing loop
running: auth, welcome, live offers to every device, accept, replay after a reconnect,
presence, and bad, big, fast or silent clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from services.consult_router.app import create_app
from services.consult_router.context import CONSULTANT_CHANNEL, RouterContext
from services.consult_router.repository import messages as message_repo
from services.embedded import EmbeddedSettings
from services.shared.clock import ManualClock
from services.shared.db.engine import create_engine
from services.shared.db.models import ConsultOutbox
from services.shared.db.session import create_sessionmaker, unit_of_work
from services.shared.notify import PostgresNotifier
from services.shared.resources import Resources
from services.shared.schemas.events import EventType
from tests.consult_router.conftest import IDLE_TIMEOUT_SECONDS, Desk, snapshot
from tests.support import (
    SocketStorm,
    errors_when_leaving_before_hello,
    eventually,
    freed_without_the_collector,
    running_server,
    statements_sent,
    token,
)


async def receive(socket: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(socket.recv(), timeout))
    return message


async def receive_type(socket: ClientConnection, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    """The next message of a kind, passing over queue refreshes."""
    while True:
        message = await receive(socket, timeout)
        if message["type"] == kind:
            return message
        assert message["type"] == "queue", message


async def _no_offers(desk: Desk, consultant_id: str) -> bool:
    return await desk.offers(consultant_id) == []


async def close_code(socket: ClientConnection) -> int:
    async def drain() -> None:
        while True:
            await asyncio.wait_for(socket.recv(), 10)

    with pytest.raises(ConnectionClosed) as closed:
        await drain()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def hello(
    server: str, name: str, *, after: int | None = None
) -> tuple[ClientConnection, dict[str, Any]]:
    socket = await connect(f"ws://{server}/v1/consultant/stream")
    greeting: dict[str, Any] = {"type": "hello", "token": token("consultant", name)}
    if after is not None:
        greeting["after"] = after
    await socket.send(json.dumps(greeting))
    welcome = await receive(socket)
    assert welcome["type"] == "welcome", welcome
    assert (await receive(socket))["type"] == "queue"
    return socket, welcome


async def dashboard(server: str, consultant_id: str) -> ClientConnection:
    """A consultant's dashboard, welcomed and sent the queue."""
    socket, _ = await hello(server, consultant_id)
    return socket


class TestHandshake:
    async def test_refusals_close_with_the_contracts_codes(
        self, server: str, live_desk: Desk
    ) -> None:
        async with connect(f"ws://{server}/v1/consultant/stream") as silent:
            assert await close_code(silent) == 4401
        async with connect(f"ws://{server}/v1/consultant/stream") as crew:
            await crew.send(json.dumps({"type": "hello", "token": token("paramedic", "crew")}))
            assert await close_code(crew) == 4403
        async with connect(f"ws://{server}/v1/consultant/stream") as stranger:
            await stranger.send(
                json.dumps({"type": "hello", "token": token("consultant", "dr-nobody")})
            )
            assert await close_code(stranger) == 4404

    async def test_a_client_gone_before_its_hello_is_no_error(
        self, live_settings: EmbeddedSettings, resources: Resources,
        caplog: pytest.LogCaptureFixture,
    ) -> None:  # fmt: skip
        app = create_app(live_settings, resources=resources)
        path = "/v1/consultant/stream"
        assert await errors_when_leaving_before_hello(app, path, lambda: caplog.records) == []

    async def test_welcome_carries_the_consultant_and_their_state(
        self, server: str, live_desk: Desk
    ) -> None:
        await live_desk.consultant("dr-a", ["frailty"])
        socket, welcome = await hello(server, "dr-a")
        async with socket:
            assert welcome["consultant"]["id"] == "dr-a"
            assert welcome["consultant"]["status"] == "available"
            assert welcome["consultant"]["connected"] is True
            assert (welcome["offers"], welcome["consults"]) == ([], [])

    async def test_each_case_the_welcome_shows_is_an_audited_read(
        self, server: str, live_desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        await live_desk.consultant("dr-a", ["frailty"])
        case = snapshot(clock)
        await live_desk.send_case(case)  # the routing loop offers it to dr-a
        await eventually(lambda: _offered(live_desk, "dr-a"))
        shown_before = await _shown(resources)
        socket, welcome = await hello(server, "dr-a")
        async with socket:
            assert [offer["case"]["id"] for offer in welcome["offers"]] == [case["id"]]
        assert await _shown(resources) == [*shown_before, ("dr-a", case["id"], "welcome")]


async def _offered(desk: Desk, consultant_id: str) -> bool:
    return await desk.offers(consultant_id) != []


async def _shown(resources: Resources) -> list[tuple[str, str, str]]:
    """The reads of cases written for audit so far: who, which case, how."""
    async with unit_of_work(resources.sessionmaker) as session:
        payloads = await session.scalars(
            select(ConsultOutbox.payload)
            .where(ConsultOutbox.event_type == EventType.CASE_VIEWED)
            .order_by(ConsultOutbox.id)
        )
        return [(p["actor"]["sub"], p["subject_id"], p["data"]["via"]) for p in payloads]


class TestLiveOffers:
    async def test_an_offer_reaches_every_device_and_accepting_assigns_the_case(
        self, server: str, live_desk: Desk, clock: ManualClock
    ) -> None:
        await live_desk.consultant("dr-a", ["frailty"])
        tablet, _ = await hello(server, "dr-a")
        phone, _ = await hello(server, "dr-a")
        async with tablet, phone:
            case = snapshot(clock)
            await live_desk.send_case(case)
            on_tablet = await receive_type(tablet, "offer")
            on_phone = await receive_type(phone, "offer")
            assert on_tablet == on_phone
            assert on_tablet["case"]["id"] == case["id"]
            await phone.send(json.dumps({"type": "accept", "offer_id": on_phone["offer_id"]}))
            assigned = await receive_type(tablet, "assigned")
            assert assigned["case"]["id"] == case["id"]
            assert assigned["seq"] == on_tablet["seq"] + 1

    async def test_a_broadcast_winner_withdraws_the_others(
        self, server: str, live_desk: Desk, clock: ManualClock
    ) -> None:
        await live_desk.consultant("dr-a", ["emergency_medicine"])
        await live_desk.consultant("dr-b", ["emergency_medicine"])
        first, _ = await hello(server, "dr-a")
        second, _ = await hello(server, "dr-b")
        async with first, second:
            await live_desk.send_case(snapshot(clock, specialty="stroke"))
            offer_a = await receive_type(first, "offer")
            await receive_type(second, "offer")
            await first.send(json.dumps({"type": "accept", "offer_id": offer_a["offer_id"]}))
            withdrawn = await receive_type(second, "offer_withdrawn")
            assert withdrawn["reason"] == "accepted_elsewhere"

    async def test_a_late_accept_is_an_error_and_the_socket_lives_on(
        self, server: str, live_desk: Desk, clock: ManualClock
    ) -> None:
        await live_desk.consultant("dr-a", ["emergency_medicine"])
        await live_desk.consultant("dr-b", ["emergency_medicine"])
        first, _ = await hello(server, "dr-a")
        second, _ = await hello(server, "dr-b")
        async with first, second:
            await live_desk.send_case(snapshot(clock, specialty="stroke"))
            offer_a = await receive_type(first, "offer")
            offer_b = await receive_type(second, "offer")
            await first.send(json.dumps({"type": "accept", "offer_id": offer_a["offer_id"]}))
            await receive_type(second, "offer_withdrawn")
            await second.send(json.dumps({"type": "accept", "offer_id": offer_b["offer_id"]}))
            error = await receive_type(second, "error")
            assert (error["error"], error["offer_id"]) == ("offer_taken", offer_b["offer_id"])
            await second.send(json.dumps({"type": "ping"}))
            assert (await receive_type(second, "pong"))["type"] == "pong"


class TestReconnection:
    async def test_a_device_that_reconnects_with_after_misses_nothing(
        self, server: str, live_desk: Desk, clock: ManualClock
    ) -> None:
        await live_desk.consultant("dr-a", ["frailty"])
        await live_desk.consultant("dr-b", ["frailty"])
        tablet, _ = await hello(server, "dr-a")  # stays connected, so dr-a stays present
        async with tablet:
            phone, _ = await hello(server, "dr-a")
            first_case = snapshot(clock)
            await live_desk.send_case(first_case)
            seen = await receive_type(phone, "offer")
            assert (await receive_type(tablet, "offer"))["offer_id"] == seen["offer_id"]
            await phone.close()
            # While the phone is in a lift: the offer is declined on the tablet, another comes.
            await tablet.send(json.dumps({"type": "decline", "offer_id": seen["offer_id"]}))
            # The decline lands before the next case arrives; otherwise the next case would
            # rightly go to dr-b, the only one free at that moment.
            await eventually(lambda: _no_offers(live_desk, "dr-a"))
            second_case = snapshot(clock)
            await live_desk.send_case(second_case)
            assert (await receive_type(tablet, "offer"))["case"]["id"] == second_case["id"]
            phone, welcome = await hello(server, "dr-a", after=seen["seq"])
            async with phone:
                assert welcome["replay_from"] == seen["seq"]
                replayed = await receive_type(phone, "offer")
                assert replayed["seq"] > seen["seq"]
                assert replayed["case"]["id"] == second_case["id"]
                assert [o["case"]["id"] for o in welcome["offers"]] == [second_case["id"]]

    async def test_when_the_last_device_goes_the_offer_moves_on_at_once(
        self, server: str, live_desk: Desk, clock: ManualClock
    ) -> None:
        await live_desk.consultant("dr-a", ["frailty"])
        await live_desk.consultant("dr-b", ["frailty"])
        only_a, _ = await hello(server, "dr-a")
        b_socket, _ = await hello(server, "dr-b")
        async with b_socket:
            await live_desk.send_case(snapshot(clock))
            await receive_type(only_a, "offer")
            await only_a.close()
            moved = await receive_type(b_socket, "offer")
            assert moved["broadcast"] is False
        admin = {"Authorization": f"Bearer {token('admin', 'x')}"}
        listed = (await live_desk.http.get("/v1/consultants", headers=admin)).json()
        assert {c["id"]: c["status"] for c in listed}["dr-a"] == "away"


class TestReconnectionStorm:
    async def test_a_dashboard_waiting_its_turn_stays_alive_and_is_answered_in_order(
        self, live_settings: EmbeddedSettings, resources: Resources, clock: ManualClock
    ) -> None:
        # Thousands of sockets reconnecting take turns at the database; the server's
        # keep-alive (made short here) must not take one still waiting for a dead socket.
        app = create_app(live_settings, resources=resources)
        async with (
            running_server(app, ws_ping_interval=0.1, ws_ping_timeout=0.3) as address,
            httpx.AsyncClient(base_url=f"http://{address}") as http,
        ):
            await Desk(http, clock, resources).consultant("dr-a", ["frailty"])
            storm = SocketStorm(resources.socket_reads, 20)
            # Every turn taken, the rest of the storm in line, for operations to see.
            await eventually(lambda: resources.socket_reads.waiting > 0)
            metrics = (await http.get("/metrics")).text
            waiting = resources.socket_reads.waiting
            assert f"reach_socket_reads_waiting {float(waiting)}" in metrics
            async with connect(f"ws://{address}/v1/consultant/stream") as socket:
                greeting = {"type": "hello", "token": token("consultant", "dr-a")}
                await socket.send(json.dumps(greeting))
                await socket.send(json.dumps({"type": "ping"}))
                # Several keep-alive rounds pass while the dashboard waits its turn.
                await asyncio.sleep(1.0)
                await storm.end()
                kinds = [(await receive(socket))["type"] for _ in range(3)]
                assert kinds == ["welcome", "queue", "pong"]

    async def test_a_queue_that_changed_while_the_dashboard_waited_comes_in_its_welcome(
        self, server: str, live_desk: Desk, resources: Resources, clock: ManualClock
    ) -> None:
        # Every socket in a storm sees the queue change while it waits for its welcome;
        # its welcome's queue is newer than those changes, and it is sent once.
        # Away, so that the case stays in the queue rather than being offered to them.
        await live_desk.consultant("dr-watching", ["frailty"], available=False)
        await live_desk.consultant("dr-late", ["frailty"], available=False)
        watching, _ = await hello(server, "dr-watching")
        reads = resources.socket_reads
        first_wave = SocketStorm(reads, reads.at_once)  # every turn taken
        await eventually(lambda: reads.waiting == 0)
        async with watching, connect(f"ws://{server}/v1/consultant/stream") as late:
            await late.send(json.dumps({"type": "hello", "token": token("consultant", "dr-late")}))
            await eventually(lambda: reads.waiting == 1)  # dr-late's connection, in line
            second_wave = SocketStorm(reads, reads.at_once)  # its welcome waits for these
            await first_wave.end()
            await eventually(lambda: reads.waiting == 1)  # now its welcome, in line
            case = snapshot(clock)
            await live_desk.send_case(case)
            queue = await receive_type(watching, "queue")
            assert [item["case_id"] for item in queue["items"]] == [case["id"]]
            await second_wave.end()
            assert (await receive(late))["type"] == "welcome"
            queue = await receive(late)
            assert [item["case_id"] for item in queue["items"]] == [case["id"]]
            await late.send(json.dumps({"type": "ping"}))
            assert (await receive(late))["type"] == "pong"


class TestMisbehaviour:
    async def test_a_dashboard_the_queue_feed_gives_up_on_is_closed(
        self, live_settings: EmbeddedSettings, resources: Resources, clock: ManualClock
    ) -> None:
        app = create_app(live_settings, resources=resources)
        async with (
            running_server(app) as address,
            httpx.AsyncClient(base_url=f"http://{address}") as client,
        ):
            await Desk(client, clock, resources).consultant("dr-a", ["frailty"])
            socket, _ = await hello(address, "dr-a")
            async with socket:
                [watcher] = app.state.router.queue_feed._watchers.values()
                watcher.drop()  # what the feed does when a send does not finish in time
                assert await close_code(socket) == 1001

    async def test_bad_messages_get_errors_and_the_connection_survives(
        self, server: str, live_desk: Desk
    ) -> None:
        await live_desk.consultant("dr-a", ["frailty"])
        socket, _ = await hello(server, "dr-a")
        async with socket:
            await socket.send("{not json")
            assert (await receive_type(socket, "error"))["error"] == "malformed_message"
            await socket.send(json.dumps({"type": "ping", "pad": "x" * 70_000}))
            assert (await receive_type(socket, "error"))["error"] == "message_too_large"
            await socket.send(json.dumps({"type": "teleport"}))
            assert (await receive_type(socket, "error"))["error"] == "unsupported_message"
            await socket.send(json.dumps({"type": "status", "status": "asleep"}))
            assert (await receive_type(socket, "error"))["error"] == "bad_message"
            await socket.send(json.dumps({"type": "accept"}))
            assert (await receive_type(socket, "error"))["error"] == "bad_message"
            await socket.send(json.dumps({"type": "status", "status": "busy"}))
            assert (await receive_type(socket, "status"))["status"] == "busy"

    async def test_a_flood_is_rate_limited(self, server: str, live_desk: Desk) -> None:
        await live_desk.consultant("dr-a", ["frailty"])
        socket, _ = await hello(server, "dr-a")
        async with socket:
            for _ in range(40):
                await socket.send(json.dumps({"type": "ping"}))
            replies = [await receive(socket) for _ in range(40)]
            kinds = {reply.get("error", reply["type"]) for reply in replies}
            assert kinds == {"pong", "rate_limited"}

    @pytest.mark.parametrize("idle_timeout", [1.0])
    async def test_a_silent_socket_is_closed_as_idle(self, server: str, live_desk: Desk) -> None:
        await live_desk.consultant("dr-a", ["frailty"])
        socket, _ = await hello(server, "dr-a")
        async with socket:
            assert await close_code(socket) == 1001


class TestLoggedMessagesFromMemory:
    @pytest.fixture
    def live_settings(self, settings: EmbeddedSettings) -> EmbeddedSettings:
        # No safety-net poll of the log within the test: every read is the pump's choice.
        return settings.model_copy(
            update={
                "websocket_idle_timeout_seconds": IDLE_TIMEOUT_SECONDS,
                "stream_poll_seconds": 600.0,
            }
        )

    async def test_an_offer_logged_here_reaches_the_socket_without_a_read_of_the_log(
        self, server: str, live_desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        await live_desk.consultant("dr-a", ["frailty"])
        with statements_sent(resources.engine, _reads_the_log) as reads:
            socket, _ = await hello(server, "dr-a")
            async with socket:
                # A new socket replays what it missed from the log: one read.
                await eventually(lambda: len(reads) == 1)
                case = snapshot(clock)
                await live_desk.send_case(case)
                offer = await receive_type(socket, "offer")
                reads_for_the_offer = reads[1:]
        assert offer["case"]["id"] == case["id"]
        if not resources.notifier.spans_processes:
            # One process logs every message: what it just logged is all there is to send.
            assert reads_for_the_offer == []

    async def test_a_message_logged_by_another_process_is_sent_first_in_seq_order(
        self, server: str, live_desk: Desk, clock: ManualClock, resources: Resources
    ) -> None:
        await live_desk.consultant("dr-a", ["frailty"])
        socket, welcome = await hello(server, "dr-a")
        async with socket:
            # Another process's message: in the log, not kept in this one's memory, and (on
            # SQLite) no wake-up for this process's sockets.
            async with unit_of_work(resources.sessionmaker) as session:
                elsewhere = await message_repo.append(
                    session, "dr-a", type="case_updated", payload={"note": "x"}, at=clock.now()
                )
            await live_desk.send_case(snapshot(clock))
            first = await receive_type(socket, "case_updated")
            offer = await receive_type(socket, "offer")
        assert first["seq"] == elsewhere == welcome["seq"] + 1
        assert offer["seq"] == elsewhere + 1


# The streams' safety-net loop, pushed out of the test's way.
_LOOKS_BY_HAND = {"stream_poll_seconds": 3600.0}


@contextlib.asynccontextmanager
async def looks_by_hand(
    settings: EmbeddedSettings, resources: Resources, clock: ManualClock
) -> AsyncIterator[tuple[str, Desk, RouterContext]]:
    """A server whose streams look at the log only when the test says (or a wake-up
    does): its address, a desk to set things up, and its context."""
    app = create_app(settings.model_copy(update=_LOOKS_BY_HAND), resources=resources)
    async with (
        running_server(app) as address,
        httpx.AsyncClient(base_url=f"http://{address}") as http,
    ):
        yield address, Desk(http, clock, resources), app.state.router


class TestLostWakeUps:
    async def test_the_log_watch_sends_a_message_whose_wake_up_was_lost_and_reads_no_more(
        self, live_settings: EmbeddedSettings, resources: Resources, clock: ManualClock
    ) -> None:
        # One look at the log for every socket of the process (no socket polls on its
        # own); only the socket that is behind reads the log. The test makes the looks
        # itself: one from the process's loop during a read would add a read.
        async with looks_by_hand(live_settings, resources, clock) as (address, desk, ctx):
            await desk.consultant("dr-behind", ["frailty"], available=False)
            await desk.consultant("dr-current", ["frailty"], available=False)
            with statements_sent(resources.engine, _reads_the_log) as reads:
                behind, welcome = await hello(address, "dr-behind")
                current, _ = await hello(address, "dr-current")
                await eventually(lambda: len(reads) == 2)  # each replays from the log once
                async with behind, current:
                    # Logged by another process whose notification never came.
                    async with unit_of_work(resources.sessionmaker) as session:
                        lost = await message_repo.append(
                            session, "dr-behind", type="case_updated", payload={}, at=clock.now()
                        )
                    await ctx.log_watch.look(resources.sessionmaker)
                    message = await receive_type(behind, "case_updated")
                    await eventually(lambda: len(reads) == 3)
                    await current.send(json.dumps({"type": "ping"}))
                    assert (await receive(current))["type"] == "pong"
                    await ctx.log_watch.look(resources.sessionmaker)  # nobody behind now
                    await behind.send(json.dumps({"type": "ping"}))
                    assert (await receive(behind))["type"] == "pong"
        assert message["seq"] == lost == welcome["seq"] + 1
        assert len(reads) == 3  # the two replays, then dr-behind's socket, once


class TestWhatTheLogIsReadFor:
    """A socket sends what its own process logged from memory; it reads the log for what
    another process may have logged (on PostgreSQL, any replica)."""

    async def test_an_offer_this_process_made_is_sent_without_reading_the_log(
        self, live_settings: EmbeddedSettings, resources: Resources, clock: ManualClock
    ) -> None:
        async with looks_by_hand(live_settings, resources, clock) as (address, desk, _):
            await desk.consultant("dr-a", ["frailty"])
            with statements_sent(resources.engine, _reads_the_log) as reads:
                socket, _ = await hello(address, "dr-a")
                async with socket:
                    await eventually(lambda: len(reads) == 1)  # the replay
                    await desk.send_case(snapshot(clock))
                    await receive_type(socket, "offer")
                    await socket.send(json.dumps({"type": "ping"}))
                    assert (await receive(socket))["type"] == "pong"
        assert len(reads) == 1

    async def test_a_message_another_process_logged_and_announced_is_read_and_sent(
        self, live_settings: EmbeddedSettings, resources: Resources, clock: ManualClock
    ) -> None:
        if not resources.notifier.spans_processes:
            pytest.skip("a SQLite file's notifications stay in its one process")
        assert live_settings.database_url is not None
        # Another process: its own connection and its own notifier, whose notification
        # reaches this one through PostgreSQL.
        elsewhere = create_engine(live_settings.database_url)
        their_notifier = PostgresNotifier(live_settings.database_url)
        try:
            async with looks_by_hand(live_settings, resources, clock) as (address, desk, _):
                await desk.consultant("dr-a", ["frailty"])
                socket, _ = await hello(address, "dr-a")
                async with socket:
                    await desk.send_case(snapshot(clock))
                    offer = await receive_type(socket, "offer")  # caught up, from memory
                    async with unit_of_work(create_sessionmaker(elsewhere)) as session:
                        seq = await message_repo.append(
                            session, "dr-a", type="case_updated", payload={}, at=clock.now()
                        )
                        await their_notifier.publish(session, CONSULTANT_CHANNEL, "dr-a")
                    message = await receive_type(socket, "case_updated")
        finally:
            await elsewhere.dispose()
        assert message["seq"] == seq == offer["seq"] + 1


def _reads_the_log(statement: str) -> bool:
    return statement.lstrip().upper().startswith("SELECT") and "FROM consult_message" in statement


class TestTeardown:
    async def test_a_dashboard_the_consultant_closes_is_freed_at_once(
        self, server: str, live_desk: Desk
    ) -> None:
        await live_desk.consultant("dr-a", ["frailty"])

        await freed_without_the_collector(
            partial(dashboard, server, "dr-a"), lambda socket: socket.close()
        )

    @pytest.mark.parametrize("idle_timeout", [1.0])
    async def test_a_dashboard_closed_as_idle_is_freed_at_once(
        self, server: str, live_desk: Desk
    ) -> None:
        await live_desk.consultant("dr-a", ["frailty"])

        async def closed_as_idle(socket: ClientConnection) -> None:
            assert await close_code(socket) == 1001

        await freed_without_the_collector(partial(dashboard, server, "dr-a"), closed_as_idle)
