"""A socket's `Sender` against a real uvicorn: frames go to the server's own ASGI `send`,
kept for the socket by the outermost middleware, in order; a client that has gone is a
`WebSocketDisconnect`, as it is through Starlette."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi import FastAPI, WebSocket
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import connect

from services.shared.web import RequestContextMiddleware, install_common
from services.shared.ws import SOCKET_SEND_SCOPE_KEY, Sender
from tests.support import running_server


def socket_app(outcome: asyncio.Future[BaseException | None]) -> FastAPI:
    app = FastAPI()
    install_common(app, service="probe", max_body_bytes=1024 * 1024)

    @app.websocket("/v1/three")
    async def three(websocket: WebSocket) -> None:
        await websocket.accept()
        sender = Sender(websocket)
        for number in range(3):
            await sender.send({"type": "number", "n": number})
        await websocket.receive()  # the client's goodbye

    @app.websocket("/v1/after-goodbye")
    async def after_goodbye(websocket: WebSocket) -> None:
        await websocket.accept()
        sender = Sender(websocket)
        message = await websocket.receive()
        assert message["type"] == "websocket.disconnect"
        try:
            await sender.send({"type": "too-late"})
        except BaseException as exc:
            outcome.set_result(exc)
        else:
            outcome.set_result(None)

    return app


@pytest.fixture
async def outcome() -> asyncio.Future[BaseException | None]:
    return asyncio.get_running_loop().create_future()


class TestSender:
    async def test_the_servers_own_send_is_kept_for_sockets_only(self) -> None:
        seen: dict[str, bool] = {}

        async def inner(scope: dict[str, object], receive: object, send: object) -> None:
            seen[str(scope["type"])] = SOCKET_SEND_SCOPE_KEY in scope
            if scope["type"] == "websocket":
                assert scope[SOCKET_SEND_SCOPE_KEY] is send

        middleware = RequestContextMiddleware(inner)  # type: ignore[arg-type]

        async def server_send(message: object) -> None:
            return None

        async def receive() -> dict[str, str]:
            return {"type": "websocket.connect"}

        await middleware({"type": "websocket", "headers": []}, receive, server_send)
        await middleware({"type": "http", "headers": []}, receive, server_send)
        assert seen == {"websocket": True, "http": False}

    async def test_messages_arrive_in_order(
        self, outcome: asyncio.Future[BaseException | None]
    ) -> None:
        async with (
            running_server(socket_app(outcome)) as host,
            connect(f"ws://{host}/v1/three") as socket,
        ):
            received = [json.loads(await socket.recv()) for _ in range(3)]
        assert received == [{"type": "number", "n": n} for n in range(3)]

    async def test_a_send_after_the_client_has_gone_is_a_disconnect(
        self, outcome: asyncio.Future[BaseException | None]
    ) -> None:
        async with running_server(socket_app(outcome)) as host:
            async with connect(f"ws://{host}/v1/after-goodbye"):
                pass
            raised = await asyncio.wait_for(outcome, timeout=10)
        assert isinstance(raised, WebSocketDisconnect)
        assert raised.code == 1006
