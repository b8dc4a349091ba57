"""The fan-out's second yardstick: a bare ASGI app on uvicorn, served as reach is (the
sans-I/O websockets implementation, uvloop, no compression), that keeps every client's
ASGI `send` and, when the control client sends a payload, sends it to all the others.
No framework, no auth, no database: what any ASGI app's broadcast costs on this server,
beside the bare `websockets` server's (`baseline_broadcast`).

    python -m bench.asgi_broadcast PORT
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn
from starlette.types import Receive, Scope, Send

CLIENTS: dict[object, Send] = {}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    if scope["path"] == "/control":
        await control(receive, send)
        return
    key = object()
    CLIENTS[key] = send
    try:
        while (await receive())["type"] != "websocket.disconnect":
            pass
    finally:
        CLIENTS.pop(key, None)


async def control(receive: Receive, send: Send) -> None:
    while True:
        message: dict[str, Any] = dict(await receive())
        if message["type"] == "websocket.disconnect":
            return
        frame = {"type": "websocket.send", "text": message.get("text")}
        for client in list(CLIENTS.values()):
            await client(frame)
        await send({"type": "websocket.send", "text": "sent"})


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        lifespan="off",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
    )
