"""The fan-out baseline: a bare `websockets` server that keeps every client and, when the
control client sends a payload, broadcasts it to all the others. No framework, no auth,
no database: the least work a broadcast can cost in Python.

    python -m bench.baseline_broadcast PORT [deflate]

Like reach by default, it does not compress unless asked to.
"""

from __future__ import annotations

import asyncio
import sys

from websockets.asyncio.server import ServerConnection, broadcast, serve

CLIENTS: set[ServerConnection] = set()


async def handler(connection: ServerConnection) -> None:
    if connection.request is not None and connection.request.path == "/control":
        async for payload in connection:
            broadcast(CLIENTS, payload)
            await connection.send("sent")
        return
    CLIENTS.add(connection)
    try:
        await connection.wait_closed()
    finally:
        CLIENTS.discard(connection)


async def main(port: int) -> None:
    compression = "deflate" if len(sys.argv) > 2 and sys.argv[2] == "deflate" else None
    async with serve(handler, "127.0.0.1", port, max_size=2**20, compression=compression):
        await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
