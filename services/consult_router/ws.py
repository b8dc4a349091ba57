"""`WS /v1/consultant/stream`: a consultant's live line to the router.

After `hello` the server sends `welcome` (the consultant, their status, open offers and
consults) and the open `queue`, then — if the hello carried `after` — every logged
message the consultant missed, then live ones. Logged messages (`offer`,
`offer_withdrawn`, `assigned`, `case_updated`) are numbered per consultant and read from
the database, so every device of the consultant, on any process, receives each one and a
reconnect misses nothing. Replies (`pong`, `error`, `status`) and snapshots (`welcome`,
`queue`) carry the newest seq without adding one.

The client may send `status`, `accept`, `decline` and `ping`, each handled in its own
short transaction. Messages are limited in size and rate; a socket that says nothing
(not even `ping`) for too long, or lives too long, is closed (1001) and reconnects.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.websockets import WebSocket, WebSocketDisconnect

from services.consult_router import consults, presence, snapshots
from services.consult_router.context import CONSULTANT_CHANNEL, RouterContext
from services.consult_router.repository import messages as message_repo
from services.consult_router.repository import rota as rota_repo
from services.consult_router.schemas import ConsultantSnapshot
from services.shared.auth import Principal
from services.shared.db.session import in_transaction
from services.shared.domain.vocabulary import ConsultantStatus, Role
from services.shared.errors import AppError
from services.shared.notify import Subscription
from services.shared.observability import log_failure
from services.shared.resources import Resources
from services.shared.ws import (
    CLOSE_GOING_AWAY,
    CLOSE_NOT_FOUND,
    CLOSE_POLICY,
    CloseConnection,
    Inbox,
    MessageTooLarge,
    Sender,
    UnstorableMessage,
    authenticate,
    parse_after,
    reading,
    run_until_first_ends,
    within,
)

logger = logging.getLogger("reach.router.stream")

_BATCH = 200
_DROPPED_BEFORE_CLOSING = 200


class _StatusMessage(BaseModel):
    status: ConsultantStatus


class _OfferMessage(BaseModel):
    offer_id: str = Field(min_length=1, max_length=64)
    reason: str | None = Field(default=None, max_length=500)


@dataclass
class _Line:
    """One socket's state, shared by its tasks."""

    websocket: WebSocket
    inbox: Inbox
    sender: Sender
    principal: Principal
    connection_id: str
    last_seq: int
    tokens: float
    refilled_at: float = field(default_factory=time.monotonic)
    dropped: int = 0
    welcomed: bool = False
    queue_missed: bool = False
    too_slow: bool = False
    # The log watch saw a message this socket has not sent: read the log, not memory.
    check_log: bool = False

    async def send(self, kind: str, **body: Any) -> None:
        await self.sender.send({"type": kind, "seq": self.last_seq, **body})


async def consultant_stream(websocket: WebSocket) -> None:
    resources: Resources = websocket.app.state.resources
    ctx: RouterContext = websocket.app.state.router
    try:
        principal, replay_from = await _hello(websocket, resources, ctx)
    except CloseConnection as close:
        await websocket.close(close.code, close.reason)
        return
    except WebSocketDisconnect:  # gone before saying who they are: nothing to undo
        return
    max_bytes = ctx.settings.websocket_max_message_bytes
    async with reading(websocket, max_bytes=max_bytes) as inbox:
        try:
            line = await _open(websocket, inbox, resources, ctx, principal)
        except CloseConnection as close:
            await websocket.close(close.code, close.reason)
            return
        try:
            await _serve(line, resources, ctx, replay_from)
        finally:
            try:
                await resources.socket_reads.run(
                    lambda session: presence.disconnect(session, ctx, line.connection_id)
                )
            except Exception as exc:
                # Left, the row would be refreshed with this process's others, as if the
                # socket were open, and offers would go on coming: the heartbeat retries.
                ctx.unsaid_goodbyes.add(line.connection_id)
                log_failure(logger, "a closed socket's presence could not be removed", exc)


async def _hello(
    websocket: WebSocket, resources: Resources, ctx: RouterContext
) -> tuple[Principal, int | None]:
    """Who is on the socket, and where they want to be replayed from."""
    settings = ctx.settings
    principal, hello = await authenticate(
        websocket,
        resources.tokens,
        roles=frozenset({Role.CONSULTANT}),
        hello_timeout=settings.websocket_hello_timeout_seconds,
        max_bytes=settings.websocket_max_message_bytes,
    )
    try:
        replay_from = parse_after(hello.get("after") if hello else _query_after(websocket))
    except ValueError:
        raise CloseConnection(CLOSE_POLICY, "after must be a non-negative integer") from None
    return principal, replay_from


async def _open(
    websocket: WebSocket,
    inbox: Inbox,
    resources: Resources,
    ctx: RouterContext,
    principal: Principal,
) -> _Line:
    async def connect(session: AsyncSession) -> str:
        consultant = await rota_repo.get_consultant(session, principal.sub)
        if consultant is None:
            raise CloseConnection(CLOSE_NOT_FOUND, "not on the rota")
        return await presence.connect(session, ctx, consultant.id)

    connection_id = await resources.socket_reads.run(connect)
    return _Line(
        websocket=websocket,
        inbox=inbox,
        sender=Sender(websocket),
        principal=principal,
        connection_id=connection_id,
        last_seq=0,
        tokens=2 * ctx.settings.websocket_messages_per_second,
    )


def _query_after(websocket: WebSocket) -> int | None:
    raw = websocket.query_params.get("after")
    if raw is None:
        return None
    if not raw.isdigit():
        raise ValueError("after")
    return int(raw)


async def _serve(
    line: _Line, resources: Resources, ctx: RouterContext, replay_from: int | None
) -> None:
    consultant_id = line.principal.sub
    with (
        ctx.notifier.subscribe(CONSULTANT_CHANNEL, consultant_id) as mine,
        ctx.queue_feed.watch(partial(_deliver_queue, line), drop=partial(_too_slow, line, mine)),
        ctx.log_watch.watch(
            consultant_id, sent=lambda: line.last_seq, look_again=partial(_look_again, line, mine)
        ),
    ):
        await _welcome(line, resources, ctx, replay_from)
        done, _ = await run_until_first_ends(
            _pump(line, resources, ctx, mine),
            _listen(line, resources, ctx),
            lifetime=ctx.settings.websocket_max_lifetime_seconds,
        )
    reason = "reconnect with after"
    for task in done:
        error = None if task.cancelled() else task.exception()
        if isinstance(error, CloseConnection):
            with contextlib.suppress(Exception):
                await line.websocket.close(error.code, error.reason)
            return
        if error is not None and not isinstance(error, WebSocketDisconnect):
            log_failure(logger, "consultant stream failed", error)
            reason = "server error"
    with contextlib.suppress(Exception):
        await line.websocket.close(CLOSE_GOING_AWAY, reason)


async def _welcome(
    line: _Line, resources: Resources, ctx: RouterContext, replay_from: int | None
) -> None:

    async def read(session: AsyncSession) -> tuple[ConsultantSnapshot, str]:
        # Broadcasts until now were read before this: this read is newer. Only one that
        # comes while it is under way may be newer than it (a reconnection storm would
        # otherwise read the queue twice for every socket that waited its turn).
        line.queue_missed = False
        consultant = await consults.registered(session, line.principal.sub)
        snapshot = await snapshots.consultant_snapshot(session, ctx, consultant, via="welcome")
        return snapshot, await _read_queue(session, ctx)

    snapshot, queue = await resources.socket_reads.run(read)
    # A fresh connection starts from now; a reconnection replays what it missed.
    line.last_seq = (
        snapshot.last_seq if replay_from is None else min(replay_from, snapshot.last_seq)
    )
    body = snapshot.model_dump(mode="json")
    await line.sender.send(
        {"type": "welcome", "seq": snapshot.last_seq, "replay_from": replay_from, **body}
    )
    await line.sender.send_text(_queue_message(line, queue))
    line.welcomed = True
    if line.queue_missed:  # the queue changed while the welcome was on its way
        fresh = await resources.socket_reads.run(partial(_read_queue, ctx=ctx))
        await line.sender.send_text(_queue_message(line, fresh))


async def _read_queue(session: AsyncSession, ctx: RouterContext) -> str:
    """The queue, encoded, read through the session's connection: rows, not objects."""
    return await ctx.queue_lines.encoded(await session.connection(), now=ctx.clock.now())


def _queue_message(line: _Line, encoded_items: str) -> str:
    return f'{{"type":"queue","seq":{line.last_seq},"items":{encoded_items}}}'


async def _deliver_queue(line: _Line, encoded_items: str) -> None:
    """The queue feed's delivery to this socket; held back until the welcome is out."""
    if not line.welcomed:
        line.queue_missed = True
        return
    await line.sender.send_text(_queue_message(line, encoded_items))


def _look_again(line: _Line, wake: Subscription) -> None:
    """The log watch found a message past what this socket sent (its wake-up was lost)."""
    line.check_log = True
    wake.wake()


def _too_slow(line: _Line, wake: Subscription) -> None:
    """The queue feed gave up on this socket (it stopped reading): close it."""
    line.too_slow = True
    wake.wake()


async def _pump(line: _Line, resources: Resources, ctx: RouterContext, wake: Subscription) -> None:
    consultant_id = line.principal.sub
    notified = False  # the first pass replays from the log
    while True:
        if line.too_slow:
            raise CloseConnection(CLOSE_GOING_AWAY, "too slow to keep up: reconnect with after")
        # What this process just logged, straight from memory; the log is read for the rest.
        for kept in ctx.recent_messages.following(consultant_id, line.last_seq):
            line.last_seq = kept.seq
            await line.sender.send({"type": kept.type, "seq": kept.seq, **kept.payload})
        # Taken at every look, so a read of the log below answers for what it stood for.
        from_elsewhere = wake.take_from_elsewhere()
        if line.check_log or not (notified and _caught_up_in_memory(line, ctx, from_elsewhere)):
            line.check_log = False  # before the read: a look during it asks again
            logged = await resources.socket_reads.run(
                partial(
                    message_repo.after,
                    consultant_id=consultant_id,
                    seq=line.last_seq,
                    limit=_BATCH,
                )
            )
            for message in logged:
                line.last_seq = message.seq
                await line.sender.send(
                    {"type": message.type, "seq": message.seq, **message.payload}
                )
            if len(logged) == _BATCH:
                continue
        # Woken by a notification, the queue feed giving up on the socket, or the log
        # watch (the safety net for a lost notification: one look for every socket).
        notified = await wake.wait()


def _caught_up_in_memory(line: _Line, ctx: RouterContext, from_elsewhere: bool) -> bool:
    """Whether the socket has sent everything there is without reading the log: true only
    when nothing since the last look can have come from another process (the notifier
    stays in this process, or every wake-up since was this process's own commit) and the
    newest message this process logged is the last one sent. Another process's message
    wakes the socket through PostgreSQL, and a lost wake-up is the log watch's to find."""
    if ctx.notifier.spans_processes and from_elsewhere:
        return False
    return ctx.recent_messages.newest_seq(line.principal.sub) == line.last_seq


async def _listen(line: _Line, resources: Resources, ctx: RouterContext) -> None:
    settings = ctx.settings
    while True:
        try:
            message = await within(settings.websocket_idle_timeout_seconds, line.inbox.next())
        except WebSocketDisconnect:
            return
        except MessageTooLarge:
            limit = settings.websocket_max_message_bytes
            await line.send(
                "error", error="message_too_large", detail=f"messages are limited to {limit} bytes"
            )
            continue
        except UnstorableMessage as exc:  # said before anything runs: nothing changed
            await line.send("error", **exc.error_body())
            continue
        except (ValueError, json.JSONDecodeError):
            await line.send(
                "error", error="malformed_message", detail="send JSON objects with a 'type'"
            )
            continue
        if message is None:
            raise CloseConnection(CLOSE_GOING_AWAY, "idle: send ping to stay connected")
        if not _within_rate(line, settings.websocket_messages_per_second):
            line.dropped += 1
            if line.dropped > _DROPPED_BEFORE_CLOSING:
                raise CloseConnection(CLOSE_POLICY, "too many messages")
            await line.send("error", error="rate_limited", detail="slow down")
            continue
        await _handle(line, resources, ctx, message)


def _within_rate(line: _Line, per_second: float) -> bool:
    """A token bucket: `per_second` sustained, twice that in a burst."""
    now = time.monotonic()
    line.tokens = min(2 * per_second, line.tokens + (now - line.refilled_at) * per_second)
    line.refilled_at = now
    if line.tokens < 1:
        return False
    line.tokens -= 1
    return True


async def _handle(
    line: _Line, resources: Resources, ctx: RouterContext, message: dict[str, Any]
) -> None:
    kind = message["type"]
    try:
        if kind == "ping":
            await line.send("pong")
        elif kind == "hello":
            return  # already said
        elif kind == "status":
            wanted = _StatusMessage.model_validate(message)
            await in_transaction(
                resources.sessionmaker,
                lambda session: consults.set_status(
                    session, ctx=ctx, actor=line.principal, status=wanted.status
                ),
            )
            await line.send("status", status=wanted.status)
        elif kind in ("accept", "decline"):
            await _answer_offer(line, resources, ctx, kind, _OfferMessage.model_validate(message))
        else:
            await line.send(
                "error", error="unsupported_message", detail=f"unknown message type {kind[:32]!r}"
            )
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors())
        await line.send(
            "error", error="bad_message", detail=f"invalid or missing: {fields}", about=kind
        )
    except AppError as exc:
        await line.send(
            "error", error=exc.code, detail=exc.detail, about=kind, **_offer_ref(message)
        )


def _offer_ref(message: dict[str, Any]) -> dict[str, Any]:
    offer_id = message.get("offer_id")
    return {"offer_id": offer_id} if isinstance(offer_id, str) and len(offer_id) <= 64 else {}


async def _answer_offer(
    line: _Line, resources: Resources, ctx: RouterContext, kind: str, message: _OfferMessage
) -> None:

    async def answer(session: AsyncSession) -> None:
        if kind == "accept":
            await consults.accept_offer(
                session, ctx=ctx, actor=line.principal, offer_id=message.offer_id
            )
        else:
            await consults.decline_offer(
                session, ctx=ctx, actor=line.principal, offer_id=message.offer_id,
                has_reason=bool(message.reason),
            )  # fmt: skip

    await in_transaction(resources.sessionmaker, answer)
