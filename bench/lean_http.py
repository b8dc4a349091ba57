"""A lean HTTP/1.1 client for load generators: kept-alive connections over asyncio
streams, each request written as one prepared block of bytes, each response read by its
Content-Length (or its chunks). It does what a benchmark's crews need and nothing more:
no redirects, cookies, proxies or TLS.

Why not httpx: the routing benchmark's load generator shares its core with PostgreSQL,
and httpx's requests were most of the generator's CPU; what the generator takes, the
database cannot have. The routing script prints the generator's share of its core.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import orjson

IDLE_SECONDS = 4.0  # a connection idle longer is not used again


class ConnectionLost(OSError):
    """The server closed a kept-alive connection as it was reused (or mid-response):
    whether to send again is the caller's to decide (a POST with an Idempotency-Key may)."""


class Response:
    __slots__ = ("content", "status_code")

    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code = status_code
        self.content = content

    def json(self) -> Any:
        return orjson.loads(self.content)


class LeanClient:
    def __init__(self, base_url: str, *, connections: int = 100) -> None:
        host_port = base_url.removeprefix("http://").rstrip("/")
        host, _, port = host_port.partition(":")
        self._host, self._port = host, int(port or 80)
        self._host_header = f"Host: {host_port}\r\n"
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self._slots = asyncio.Semaphore(connections)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        body = b"" if json is None else orjson.dumps(json)
        lines = [f"{method} {path} HTTP/1.1\r\n", self._host_header]
        if json is not None:
            lines.append(f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n")
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}\r\n")
        lines.append("\r\n")
        message = "".join(lines).encode() + body
        async with self._slots:
            reader, writer = await self._connection()
            try:
                writer.write(message)
                status, content, keep = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                writer.close()
                raise ConnectionLost(str(exc)) from exc
            if keep:
                self._idle.append((reader, writer, time.monotonic()))
            else:
                writer.close()
            return Response(status, content)

    async def get(self, path: str, **options: Any) -> Response:
        return await self.request("GET", path, **options)

    async def post(self, path: str, **options: Any) -> Response:
        return await self.request("POST", path, **options)

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A kept-alive connection the server has not closed, nor is about to close for
        idling (uvicorn's keep-alive is 5 s), else a new one."""
        while self._idle:
            reader, writer, idle_since = self._idle.pop()
            if time.monotonic() - idle_since < IDLE_SECONDS and not reader.at_eof():
                return reader, writer
            writer.close()
        return await asyncio.open_connection(self._host, self._port)

    async def aclose(self) -> None:
        for _, writer, _ in self._idle:
            writer.close()
        self._idle.clear()

    async def __aenter__(self) -> LeanClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """The status, the body, and whether the connection may be used again."""
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    status = int(head[9:12])
    keep = b"\r\nconnection: close" not in head
    marker = head.find(b"\r\ncontent-length:")
    if marker >= 0:
        end = head.index(b"\r\n", marker + 2)
        length = int(head[marker + len(b"\r\ncontent-length:") : end])
        return status, await reader.readexactly(length), keep
    if b"\r\ntransfer-encoding: chunked" in head:
        chunks = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")  # no trailers are sent to us
        return status, b"".join(chunks), keep
    return status, await reader.read(), False  # read to the close
