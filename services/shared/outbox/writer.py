"""Writing events into a service's outbox, in the caller's transaction."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.shared.clock import Clock
from services.shared.db.base import table_of
from services.shared.db.models.outbox import OutboxRowMixin
from services.shared.db.session import insert_at_commit
from services.shared.notify import Notifier
from services.shared.schemas.events import Event


def outbox_channel(service: str) -> str:
    return f"{service}_outbox"


class Outbox:
    """A service's outbox. `enqueue` adds rows, written as the caller's transaction
    commits (with its other events, in one statement); nothing is sent before."""

    def __init__(
        self,
        *,
        service: str,
        model: type[OutboxRowMixin],
        notifier: Notifier,
        clock: Clock,
    ) -> None:
        self.service = service
        self.model = model
        self._insert = insert(table_of(model))
        self._notifier = notifier
        self._clock = clock

    async def enqueue(
        self, session: AsyncSession, event: Event, *, destinations: Iterable[str]
    ) -> None:
        await self.enqueue_each(session, [(event, tuple(destinations))])

    async def enqueue_each(
        self, session: AsyncSession, items: Iterable[tuple[Event, Iterable[str]]]
    ) -> None:
        """Several events (each to its own destinations) in one statement."""
        await self.enqueue_documents(
            session,
            [(event.model_dump(mode="json"), destinations) for event, destinations in items],
        )

    async def enqueue_documents(
        self, session: AsyncSession, items: Iterable[tuple[dict[str, Any], Iterable[str]]]
    ) -> None:
        """Like `enqueue_each`, for events already in their JSON form (`event_document`)."""
        now = self._clock.now()
        rows = [
            {
                "event_id": document["id"],
                "event_type": document["type"],
                "destination": destination,
                "payload": document,
                "created_at": now,
                "next_attempt_at": now,
                "attempts": 0,
            }
            for document, destinations in items
            for destination in destinations
        ]
        if not rows:
            return
        # Written at the commit, with the transaction's other events for this outbox.
        await insert_at_commit(session, self._insert, rows)
        # Named by destination, so a delivery lane wakes only for its own (audit's
        # events alone do not send the router's lane to look for nothing).
        for destination in {row["destination"] for row in rows}:
            await self._notifier.publish(session, outbox_channel(self.service), destination)
