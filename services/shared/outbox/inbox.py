"""The receiving side: each event is handled once, however often it is delivered.

The inbox row (keyed by event id) and the handler's changes commit in one transaction, so
an event is either handled and remembered, or neither; a redelivery of a remembered event
is answered `duplicate` and changes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from services.shared.auth import CurrentService
from services.shared.clock import Clock
from services.shared.db.models.outbox import InboxRowMixin
from services.shared.db.session import SessionDep, TransactionalRoute, undoable
from services.shared.db.statements import insert_many_if_absent
from services.shared.errors import AppError
from services.shared.schemas.events import Event, EventBatch, EventBatchResult, EventOutcome
from services.shared.storable_text import may_hold_unstorable, unstorable_fields

EventHandler = Callable[[AsyncSession, Event], Awaitable[None]]
# A service's receiving side called in this process, in the sender's transaction (the
# embedded default): the same inbox and handlers as its internal endpoint, without HTTP.
LocalReceiver = Callable[[AsyncSession, list[dict[str, Any]]], Awaitable[EventBatchResult]]
# Handles several new events at once, in order, exactly as the per-type handlers would one
# by one, but cheaper (audit appends a batch to its trail under one lock).
BatchHandler = Callable[[AsyncSession, list[Event]], Awaitable[None]]


async def receive_events(
    session: AsyncSession,
    *,
    inbox_model: type[InboxRowMixin],
    raw_events: list[dict[str, Any]],
    handlers: Mapping[str, EventHandler],
    clock: Clock,
    batch_handler: BatchHandler | None = None,
    check_text: bool = False,
) -> EventBatchResult:
    """Each event's outcome, in the order received.

    The inbox rows of the whole batch go in one statement. The new events are then
    handled together under one savepoint; if one of them is refused, that savepoint is
    undone and they are handled one by one, each under its own, so a refused event
    changes nothing and the others still count. (In a transaction run without savepoints,
    a refusal raises `RetryWithSavepoints`: the caller runs it again with them.)

    With `check_text`, an event holding text the database cannot store (a NUL, a lone
    surrogate) is rejected before anything is written: stored, it would fail the whole
    batch's transaction, and the sender would post the batch again for ever.
    """
    outcomes: list[EventOutcome | None] = [None] * len(raw_events)
    valid: list[tuple[int, Event]] = []
    for position, raw in enumerate(raw_events):
        if check_text and unstorable_fields(raw):
            outcomes[position] = _rejected(raw, "unstorable_text")
            continue
        try:
            valid.append((position, Event.model_validate(raw)))
        except ValidationError:
            outcomes[position] = _rejected(raw, "not a valid event envelope")
    first_time = await _remember(session, inbox_model, [event for _, event in valid], clock)
    fresh: list[tuple[int, Event]] = []
    for position, event in valid:
        if event.id not in first_time:
            outcomes[position] = EventOutcome(id=event.id, outcome="duplicate")
        elif event.type not in handlers:
            outcomes[position] = EventOutcome(id=event.id, outcome="ignored")
        else:
            fresh.append((position, event))
        first_time.discard(event.id)  # a second copy in the same batch is a duplicate
    if await _handle_together(session, [event for _, event in fresh], handlers, batch_handler):
        for position, event in fresh:
            outcomes[position] = EventOutcome(id=event.id, outcome="accepted")
    else:
        for position, event in fresh:
            outcomes[position] = await _handle_alone(session, event, handlers[event.type])
    return EventBatchResult(results=[outcome for outcome in outcomes if outcome is not None])


def _rejected(raw: dict[str, Any], detail: str) -> EventOutcome:
    raw_id = raw.get("id")
    # The id as sent, so the sender can tell which it was; "" when it cannot even be
    # sent back (a lone surrogate has no UTF-8 form).
    sent_back = raw_id[:64] if isinstance(raw_id, str) and _encodable(raw_id) else ""
    return EventOutcome(id=sent_back, outcome="rejected", detail=detail)


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


async def _remember(
    session: AsyncSession, inbox_model: type[InboxRowMixin], events: list[Event], clock: Clock
) -> set[str]:
    """Insert an inbox row per event not seen before; the ids that are new."""
    now = clock.now()
    rows: dict[str, dict[str, Any]] = {}
    for event in events:  # the first copy of an id stands for all
        rows.setdefault(
            event.id,
            {"event_id": event.id, "source": event.source, "event_type": event.type,
             "received_at": now},
        )  # fmt: skip
    return await insert_many_if_absent(
        session, inbox_model, list(rows.values()), returning="event_id"
    )


async def _handle_together(
    session: AsyncSession,
    events: list[Event],
    handlers: Mapping[str, EventHandler],
    batch_handler: BatchHandler | None,
) -> bool:
    """True if every event was handled under one savepoint; False if one was refused (and
    nothing of the batch's handling remains)."""
    if not events:
        return True
    try:
        async with undoable(session):
            if batch_handler is not None:
                await batch_handler(session, events)
            else:
                for event in events:
                    await handlers[event.type](session, event)
    except AppError:
        return False
    return True


async def _handle_alone(session: AsyncSession, event: Event, handler: EventHandler) -> EventOutcome:
    try:
        async with session.begin_nested():
            await handler(session, event)
    except AppError as exc:
        # Invalid for this service (an unknown case, a bad field): retrying cannot help.
        return EventOutcome(id=event.id, outcome="rejected", detail=exc.code)
    return EventOutcome(id=event.id, outcome="accepted")


def install_inbox(app: FastAPI, *, path: str, inbox_model: type[InboxRowMixin]) -> None:
    """The internal endpoint peers post events to, and the same receiver for peers in this
    process (`app.state.local_receiver`). Handlers come from `app.state` at call time."""
    app.include_router(events_router(path=path, inbox_model=inbox_model))

    async def receive_here(
        session: AsyncSession, raw_events: list[dict[str, Any]]
    ) -> EventBatchResult:
        # Not looked at for unstorable text: read from the sender's outbox, in the same
        # database, they were stored there already.
        return await _receive_for(app.state, session, inbox_model, raw_events)

    app.state.local_receiver = receive_here


async def _receive_for(
    state: Any,
    session: AsyncSession,
    inbox_model: type[InboxRowMixin],
    raw_events: list[dict[str, Any]],
    *,
    check_text: bool = False,
) -> EventBatchResult:
    """`receive_events` with the handlers the app's lifespan put on its state."""
    return await receive_events(
        session,
        inbox_model=inbox_model,
        raw_events=raw_events,
        handlers=state.event_handlers,
        clock=state.resources.clock,
        batch_handler=getattr(state, "event_batch_handler", None),
        check_text=check_text,
    )


class _InboxRoute(TransactionalRoute):
    """A batch's events are judged one by one: one with unstorable text is rejected
    alone (`receive_events`), not the batch with it."""

    checks_body = False


def events_router(*, path: str, inbox_model: type[InboxRowMixin]) -> APIRouter:
    """The internal endpoint peers post events to. Handlers come from `app.state`."""
    router = APIRouter(route_class=_InboxRoute, include_in_schema=False)

    @router.post(path, response_model=EventBatchResult)
    async def receive(
        batch: EventBatch, session: SessionDep, _caller: CurrentService, request: Request
    ) -> EventBatchResult:
        """Handle a batch of events from a peer's outbox, each exactly once."""
        # Each event is looked at for unstorable text only when the body may hold some:
        # nearly every batch is passed by one scan of its bytes.
        check_text = may_hold_unstorable(await request.body())
        return await _receive_for(
            request.app.state, session, inbox_model, batch.events, check_text=check_text
        )

    return router
