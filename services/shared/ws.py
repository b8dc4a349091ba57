"""Websocket plumbing shared by the crew's and the consultants' streams: the hello
handshake, message size limits, serialised sends and the close codes of the contract."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Coroutine
from typing import Any

from starlette.types import Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from services.shared.auth import Principal, TokenVerifier
from services.shared.domain.vocabulary import Role
from services.shared.errors import AppError, FieldProblem
from services.shared.storable_text import is_storable, may_hold_unstorable, unstorable_fields

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
# The server cannot serve the socket now (its database is out of reach): reconnect later.
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404


class CloseConnection(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class MessageTooLarge(Exception):
    pass


class UnstorableMessage(ValueError):
    """A message holding text the database cannot store (a NUL, a lone surrogate): the
    fields are named (`fields`), the text is not repeated. Answered like any message
    that is not valid; a hello that holds such text is no hello."""

    def __init__(self, fields: list[FieldProblem]) -> None:
        super().__init__("a message holds text that cannot be stored")
        self.fields = fields

    def error_body(self) -> dict[str, Any]:
        """What the `error` message that answers it says: as for any invalid message."""
        paths = ", ".join(problem.path for problem in self.fields)
        return {
            "error": "bad_message",
            "detail": f"invalid or missing: {paths}",
            "fields": [problem.model_dump() for problem in self.fields],
        }


# Where `RequestContextMiddleware` (outermost in every app) leaves a socket's ASGI `send`
# as the server gave it.
SOCKET_SEND_SCOPE_KEY = "reach.socket_send"


class Sender:
    """Sends JSON on one socket, one message at a time, from any task.

    Frames go to the server's own ASGI `send` where the app kept it (see
    `SOCKET_SEND_SCOPE_KEY`), not through Starlette's `WebSocket.send` and the exception
    middleware's wrapper around it: a queue change goes to every dashboard, and those two
    layers were about a third of each socket's share of a broadcast beyond the write
    itself. What they add is not needed here: the socket is accepted before a `Sender` is
    made, and a send after the app's close is dropped by the server, as Starlette would
    refuse it. A socket the client has gone from raises `WebSocketDisconnect`, as through
    Starlette.
    """

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket
        self._send_frame: Send | None = websocket.scope.get(SOCKET_SEND_SCOPE_KEY)
        self._lock = asyncio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_text(json.dumps(message, separators=(",", ":")))

    async def send_text(self, encoded: str) -> None:
        """Send a message already encoded (one encoding shared by many sockets)."""
        # Acquired and released by hand: `async with` adds two coroutines to every send
        # (its enter and exit), a fifth of this layer's cost a socket in a broadcast.
        await self._lock.acquire()
        try:
            if self._send_frame is None:
                await self._websocket.send_text(encoded)
                return
            try:
                await self._send_frame({"type": "websocket.send", "text": encoded})
            except OSError:  # the server's word for a client that has gone
                raise WebSocketDisconnect(code=1006) from None
        finally:
            self._lock.release()

    async def error(self, code: str, detail: str) -> None:
        await self.send({"type": "error", "error": code, "detail": detail})


async def receive_message(websocket: WebSocket, *, max_bytes: int) -> dict[str, Any]:
    """The next client message as a JSON object.

    Raises `MessageTooLarge` for an oversized message, `UnstorableMessage` for one holding
    text the database cannot store, and `ValueError` for one that is not a JSON object;
    `WebSocketDisconnect` when the client has gone.
    """
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(code=message.get("code", CLOSE_NORMAL))
    raw: str | bytes | None = message.get("text")
    if raw is None:
        raw = message.get("bytes") or b""
    if len(raw) > max_bytes:
        raise MessageTooLarge()
    parsed = json.loads(raw)
    if not isinstance(parsed, dict) or not isinstance(parsed.get("type"), str):
        raise ValueError("a message is a JSON object with a 'type'")
    if may_hold_unstorable(raw):  # one scan; the walk only when it finds something
        problems = unstorable_fields(parsed, root="message")
        if problems:
            raise UnstorableMessage(problems)
    return parsed


# Messages read ahead of the handler: a flood beyond this waits in the network buffers.
INBOX_CAPACITY = 32


class Inbox:
    """The client's messages, read as soon as they arrive and handed out in order.

    The server stops reading a socket until the app has taken its last message, and
    with it the client's answers to the server's keep-alive pings: a socket whose first
    database work waits its turn (see `SocketReads`) for longer than the ping timeout
    would be closed as dead. Read here, in the socket's own task, the client's messages
    wait in this queue instead, and the socket stays alive. `next` raises what reading
    raised (`MessageTooLarge`, `ValueError`, `WebSocketDisconnect`...) in its turn.
    """

    def __init__(self, websocket: WebSocket, *, max_bytes: int) -> None:
        self._websocket = websocket
        self._max_bytes = max_bytes
        self._queue: asyncio.Queue[dict[str, Any] | Exception] = asyncio.Queue(INBOX_CAPACITY)

    async def read(self) -> None:
        while True:
            try:
                item: dict[str, Any] | Exception = await receive_message(
                    self._websocket, max_bytes=self._max_bytes
                )
            except (MessageTooLarge, ValueError) as exc:  # the handler answers these
                item = exc
            except Exception as exc:  # the client has gone, or the socket broke: the end
                await self._queue.put(exc)
                return
            await self._queue.put(item)

    async def next(self) -> dict[str, Any]:
        item = await self._queue.get()
        if not isinstance(item, Exception):
            return item
        if not isinstance(item, (MessageTooLarge, ValueError)):
            self._queue.put_nowait(item)  # the end stays the end for every later call
        try:
            raise item
        finally:
            del item  # this frame, now in the error's traceback, must not hold the error

    def forget(self) -> None:
        """Drop what is left unread, the socket's end among it. That error's traceback
        holds the frames of the tasks that read and raised it, and those hold this inbox:
        kept here, the socket's objects could only be freed by the garbage collector's
        passes, not as soon as the socket is done."""
        while not self._queue.empty():
            self._queue.get_nowait()


async def within(seconds: float, message: Awaitable[dict[str, Any]]) -> dict[str, Any] | None:
    """A client's message, or None if it has not come within `seconds`.

    Not `asyncio.wait_for`, which awaits in a task of its own: that task keeps the error
    the client's leaving raises, and the error's traceback keeps the task, so the socket's
    objects would be freed only by a pass of the garbage collector. And the caller closes
    an idle socket outside this handler: raised inside it, its error would carry the
    timeout's as its context, and through that the task it ran in, a cycle again.
    """
    try:
        async with asyncio.timeout(seconds):
            return await message
    except TimeoutError:
        return None


@contextlib.asynccontextmanager
async def reading(websocket: WebSocket, *, max_bytes: int) -> AsyncIterator[Inbox]:
    """An `Inbox` for the block, read by its own task; the task ends with the block."""
    inbox = Inbox(websocket, max_bytes=max_bytes)
    task = asyncio.create_task(inbox.read())
    try:
        yield inbox
    finally:
        try:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            inbox.forget()


async def authenticate(
    websocket: WebSocket,
    verifier: TokenVerifier,
    *,
    roles: frozenset[Role],
    hello_timeout: float,
    max_bytes: int,
) -> tuple[Principal, dict[str, Any]]:
    """Accept the socket and establish who is on it.

    An `Authorization` header authenticates at once (the hello, if any, comes later);
    otherwise the first message must be `hello` with a token within `hello_timeout`.
    Returns the principal and the hello (an empty dict after header auth).
    """
    header = websocket.headers.get("authorization")
    await websocket.accept()
    hello: dict[str, Any] = {}
    try:
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise CloseConnection(CLOSE_UNAUTHORIZED, "bad authorization header")
        else:
            try:
                first = await within(hello_timeout, receive_message(websocket, max_bytes=max_bytes))
            except (ValueError, MessageTooLarge):
                raise CloseConnection(
                    CLOSE_UNAUTHORIZED, "the first message must be hello"
                ) from None
            if first is None:
                raise CloseConnection(CLOSE_UNAUTHORIZED, "no hello in time")
            hello = first
            offered = hello.get("token") if hello.get("type") == "hello" else None
            if not isinstance(offered, str):
                raise CloseConnection(CLOSE_UNAUTHORIZED, "the first message must be hello")
            token = offered
        principal = await verifier.verify(token.strip())
    except AppError:
        raise CloseConnection(CLOSE_UNAUTHORIZED, "invalid token") from None
    if principal.role not in roles:
        raise CloseConnection(CLOSE_FORBIDDEN, "role not allowed")
    if not is_storable(websocket.scope["path"]):
        # A path parameter (a case's id) holding a NUL names nothing there is.
        raise CloseConnection(CLOSE_NOT_FOUND, "not found")
    return principal, hello


def parse_after(value: Any) -> int | None:
    """A non-negative integer `after`, or None when absent; ValueError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ValueError("after must be a non-negative 64-bit integer")
    return value


async def run_until_first_ends(
    *coroutines: Coroutine[Any, Any, None], lifetime: float
) -> tuple[set[asyncio.Task[None]], bool]:
    """Run a socket's tasks (reader, writer...) until one ends or `lifetime` passes.

    Returns the finished tasks and whether the lifetime ran out. Every other task is
    cancelled and awaited before this returns — also when the caller itself is cancelled
    (a server shutting down) — so no task outlives its socket holding a connection.
    """
    tasks = [asyncio.create_task(coroutine) for coroutine in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, timeout=lifetime, return_when=asyncio.FIRST_COMPLETED)
        return done, not done
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
