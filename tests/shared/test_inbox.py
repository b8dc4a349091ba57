"""The receiving side of the outbox: a batch's events handled together when all are
acceptable, one by one when one is refused, each exactly once. On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.embedded import EmbeddedSettings
from services.shared.clock import ManualClock
from services.shared.db.models import ConsultInbox, TriageInbox
from services.shared.db.session import unit_of_work
from services.shared.errors import Unprocessable
from services.shared.outbox import EventHandler, receive_events
from services.shared.resources import Resources, open_resources
from services.shared.schemas.events import Event


@pytest.fixture
async def resources(settings: EmbeddedSettings, clock: ManualClock) -> AsyncIterator[Resources]:
    async with open_resources(settings, clock=clock) as built:
        yield built


def raw(event_id: str, kind: str = "case.noted", **data: Any) -> dict[str, Any]:
    return {
        "id": event_id,
        "type": kind,
        "source": "test",
        "occurred_at": "2026-12-01T10:00:00+00:00",
        "subject_id": "case-1",
        "data": data,
    }


class Effects:
    """A handler whose work is visible: it records the event id in another table (the
    router's inbox serves as any table would), and refuses events marked `refuse` after
    writing, so a refusal that was not undone would show."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.batches: list[list[str]] = []

    async def one(self, session: AsyncSession, event: Event) -> None:
        session.add(
            ConsultInbox(
                event_id=event.id, source="effect", event_type=event.type,
                received_at=self.clock.now(),
            )
        )  # fmt: skip
        await session.flush()
        if event.data.get("refuse"):
            raise Unprocessable("refused", code="refused")

    async def many(self, session: AsyncSession, events: list[Event]) -> None:
        self.batches.append([event.id for event in events])
        for event in events:
            await self.one(session, event)

    def handlers(self) -> dict[str, EventHandler]:
        return {"case.noted": self.one}


async def receive(
    resources: Resources, effects: Effects, events: list[dict[str, Any]], *, batched: bool
) -> list[tuple[str, str | None]]:
    async with unit_of_work(resources.sessionmaker) as session:
        result = await receive_events(
            session,
            inbox_model=TriageInbox,
            raw_events=events,
            handlers=effects.handlers(),
            clock=resources.clock,
            batch_handler=effects.many if batched else None,
        )
    return [(outcome.outcome, outcome.detail) for outcome in result.results]


async def effect_ids(resources: Resources) -> list[str]:
    async with unit_of_work(resources.sessionmaker) as session:
        return sorted((await session.execute(select(ConsultInbox.event_id))).scalars())


@pytest.mark.parametrize("batched", [False, True], ids=["per-type handlers", "batch handler"])
async def test_every_outcome_in_one_batch_in_the_order_received(
    resources: Resources, clock: ManualClock, batched: bool
) -> None:
    effects = Effects(clock)
    events = [
        raw("event-aaaa"),
        raw("event-bbbb", refuse=True),
        {"id": "event-cccc", "type": "not a type"},
        raw("event-dddd"),
        raw("event-aaaa"),  # the same event twice in one batch
        raw("event-eeee", kind="case.unheard_of"),
    ]
    outcomes = await receive(resources, effects, events, batched=batched)
    assert outcomes == [
        ("accepted", None),
        ("rejected", "refused"),
        ("rejected", "not a valid event envelope"),
        ("accepted", None),
        ("duplicate", None),
        ("ignored", None),
    ]
    # The refused event's own writes were undone; the others' stand.
    assert await effect_ids(resources) == ["event-aaaa", "event-dddd"]
    # Delivered again, every event the inbox took is a duplicate; the malformed one is not.
    again = await receive(resources, effects, events, batched=batched)
    assert [outcome for outcome, _ in again] == ["duplicate", "duplicate", "rejected"] + [
        "duplicate"
    ] * 3
    assert await effect_ids(resources) == ["event-aaaa", "event-dddd"]


async def test_acceptable_events_go_to_the_batch_handler_at_once(
    resources: Resources, clock: ManualClock
) -> None:
    effects = Effects(clock)
    outcomes = await receive(
        resources, effects, [raw(f"event-{n:04d}") for n in range(5)], batched=True
    )
    assert outcomes == [("accepted", None)] * 5
    assert effects.batches == [[f"event-{n:04d}" for n in range(5)]]
    assert await effect_ids(resources) == [f"event-{n:04d}" for n in range(5)]
