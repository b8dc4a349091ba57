"""`WS /v1/cases/{id}/stream`: the crew's live view of one case.

After the hello, the server sends every event after the client's `after`, then live
ones, each with its `seq`, so a client that reconnects with its last seq misses nothing.
The database is the source of truth: a wake-up only says "look again", and should one
be lost, the process's stream watch finds the stream behind within
`stream_poll_seconds`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from functools import partial
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from services.shared.auth import Principal
from services.shared.domain.vocabulary import Role
from services.shared.errors import NotFound
from services.shared.resources import Resources
from services.shared.ws import (
    CLOSE_GOING_AWAY,
    CLOSE_NOT_FOUND,
    CloseConnection,
    Inbox,
    MessageTooLarge,
    Sender,
    UnstorableMessage,
    authenticate,
    parse_after,
    reading,
    run_until_first_ends,
)
from services.triage_api import repository, service
from services.triage_api.context import STREAM_CHANNEL, TriageContext
from services.triage_api.views import event_read

logger = logging.getLogger("reach.triage.stream")

_READERS = frozenset({Role.PARAMEDIC, Role.COORDINATOR, Role.ADMIN})
_BATCH = 200


async def case_stream(websocket: WebSocket) -> None:
    """Stream one case's status events to its crew (or to operations)."""
    resources: Resources = websocket.app.state.resources
    ctx: TriageContext = websocket.app.state.triage
    case_id = str(websocket.path_params["case_id"])
    max_bytes = ctx.settings.websocket_max_message_bytes
    try:
        principal, after = await _hello(websocket, resources, ctx)
    except CloseConnection as close:
        await websocket.close(close.code, close.reason)
        return
    except WebSocketDisconnect:  # gone before saying who they are: nothing to undo
        return
    async with reading(websocket, max_bytes=max_bytes) as inbox:
        try:
            await _open(resources, ctx, case_id, principal)
        except CloseConnection as close:
            await websocket.close(close.code, close.reason)
            return
        sender = Sender(websocket)
        with ctx.notifier.subscribe(STREAM_CHANNEL, case_id) as wake:
            done, expired = await run_until_first_ends(
                _pump_events(sender, resources, ctx, case_id, after, wake),
                _listen(inbox, sender, max_bytes=max_bytes),
                lifetime=ctx.settings.websocket_max_lifetime_seconds,
            )
    if expired:  # lived its maximum lifetime: the client reconnects with `after`
        with contextlib.suppress(Exception):
            await websocket.close(CLOSE_GOING_AWAY, "reconnect with after")
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            logger.error("case stream ended with %s", type(task.exception()).__name__)
            with contextlib.suppress(Exception):
                await websocket.close(1011, "server error")


async def _hello(
    websocket: WebSocket, resources: Resources, ctx: TriageContext
) -> tuple[Principal, int]:
    """Who is on the socket, and the seq they have seen."""
    principal, hello = await authenticate(
        websocket,
        resources.tokens,
        roles=_READERS,
        hello_timeout=ctx.settings.websocket_hello_timeout_seconds,
        max_bytes=ctx.settings.websocket_max_message_bytes,
    )
    try:
        raw_after: Any = hello.get("after") if hello else _query_after(websocket)
        after = parse_after(raw_after) or 0
    except ValueError:
        raise CloseConnection(1008, "after must be a non-negative integer") from None
    return principal, after


async def _open(
    resources: Resources, ctx: TriageContext, case_id: str, principal: Principal
) -> None:
    """The crew may see the case (the read is audited)."""
    try:
        await resources.socket_reads.run(
            lambda session: service.read_case(
                session, ctx=ctx, case_id=case_id, actor=principal, via="stream"
            )
        )
    except NotFound:
        raise CloseConnection(CLOSE_NOT_FOUND, "no such case") from None


def _query_after(websocket: WebSocket) -> int | None:
    raw = websocket.query_params.get("after")
    if raw is None:
        return None
    if not raw.isdigit():
        raise ValueError("after")
    return int(raw)


async def _pump_events(
    sender: Sender,
    resources: Resources,
    ctx: TriageContext,
    case_id: str,
    after: int,
    wake: Any,
) -> None:
    last = after

    def sent() -> int:
        return last

    async def send_what_is_new() -> bool:
        """The events after `last`; True if there may be more."""
        nonlocal last
        events = await resources.socket_reads.run(
            partial(repository.events_after, case_id=case_id, after=last, limit=_BATCH)
        )
        for event in events:
            await sender.send(event_read(event).model_dump(mode="json"))
            last = event.seq
        return len(events) == _BATCH

    while await send_what_is_new():  # the replay
        pass
    # Watched once replayed: a look while the replay waits its turn in a reconnection
    # storm would only make the stream read again. Woken by a notification, or by the
    # stream watch when one was lost (one look at the cases for every socket).
    with ctx.stream_watch.watch(case_id, sent=sent, look_again=wake.wake):
        while True:
            await wake.wait()
            while await send_what_is_new():
                pass


async def _listen(inbox: Inbox, sender: Sender, *, max_bytes: int) -> None:
    """Answers pings and refuses anything else, politely, until the client leaves."""
    while True:
        try:
            message = await inbox.next()
        except WebSocketDisconnect:
            return
        except MessageTooLarge:
            await sender.error("message_too_large", f"messages are limited to {max_bytes} bytes")
            continue
        except UnstorableMessage as exc:
            await sender.send({"type": "error", **exc.error_body()})
            continue
        except (ValueError, json.JSONDecodeError):
            await sender.error("malformed_message", "send JSON objects with a 'type'")
            continue
        if message["type"] == "ping":
            await sender.send({"type": "pong"})
        elif message["type"] != "hello":
            await sender.error("unsupported_message", "this stream accepts ping only")
