"""The receiving side: each event is handled once, however often it is delivered.

The inbox row (keyed by event id) and the handler's changes commit in one transaction, so
an event is either handled and remembered, or neither; a redelivery of a remembered event
is answered `duplicate` and changes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from services.shared.auth import CurrentService
from services.shared.clock import Clock
from services.shared.db.models.outbox import InboxRowMixin
from services.shared.db.session import SessionDep, TransactionalRoute
from services.shared.db.statements import insert_if_absent
from services.shared.errors import AppError
from services.shared.schemas.events import Event, EventBatch, EventBatchResult, EventOutcome

EventHandler = Callable[[AsyncSession, Event], Awaitable[None]]


async def receive_events(
    session: AsyncSession,
    *,
    inbox_model: type[InboxRowMixin],
    raw_events: list[dict[str, Any]],
    handlers: Mapping[str, EventHandler],
    clock: Clock,
) -> EventBatchResult:
    results: list[EventOutcome] = []
    for raw in raw_events:
        try:
            event = Event.model_validate(raw)
        except ValidationError:
            raw_id = raw.get("id")
            results.append(
                EventOutcome(
                    id=raw_id[:64] if isinstance(raw_id, str) else "",
                    outcome="rejected",
                    detail="not a valid event envelope",
                )
            )
            continue
        results.append(await _receive_one(session, inbox_model, event, handlers, clock))
    return EventBatchResult(results=results)


async def _receive_one(
    session: AsyncSession,
    inbox_model: type[InboxRowMixin],
    event: Event,
    handlers: Mapping[str, EventHandler],
    clock: Clock,
) -> EventOutcome:
    first_time = await insert_if_absent(
        session,
        inbox_model,
        {
            "event_id": event.id,
            "source": event.source,
            "event_type": event.type,
            "received_at": clock.now(),
        },
    )
    if not first_time:
        return EventOutcome(id=event.id, outcome="duplicate")
    handler = handlers.get(event.type)
    if handler is None:
        return EventOutcome(id=event.id, outcome="ignored")
    try:
        async with session.begin_nested():
            await handler(session, event)
    except AppError as exc:
        # Invalid for this service (an unknown case, a bad field): retrying cannot help.
        return EventOutcome(id=event.id, outcome="rejected", detail=exc.code)
    return EventOutcome(id=event.id, outcome="accepted")


def events_router(*, path: str, inbox_model: type[InboxRowMixin]) -> APIRouter:
    """The internal endpoint peers post events to. Handlers come from `app.state`."""
    router = APIRouter(route_class=TransactionalRoute, include_in_schema=False)

    @router.post(path, response_model=EventBatchResult)
    async def receive(
        batch: EventBatch, session: SessionDep, _caller: CurrentService, request: Request
    ) -> EventBatchResult:
        """Handle a batch of events from a peer's outbox, each exactly once."""
        return await receive_events(
            session,
            inbox_model=inbox_model,
            raw_events=batch.events,
            handlers=request.app.state.event_handlers,
            clock=request.app.state.resources.clock,
        )

    return router
