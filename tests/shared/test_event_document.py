"""`event_document` builds an event's JSON form directly, for the hot paths: it must be
exactly what the `Event` model would have written, so receivers see no difference."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from services.shared.auth import Principal
from services.shared.domain.vocabulary import Role
from services.shared.schemas.events import Event, EventActor, EventType, event_document

CREW = Principal(sub="crew-7", role=Role.PARAMEDIC, name="Crew Seven")
DATA = {"reference": "R-7KQ2-91", "news2": {"score": 5, "risk": "medium"}, "flags": ["sepsis"]}


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 12, 2, 9, 30, tzinfo=UTC),
        datetime(2026, 12, 2, 9, 30, 1, 450000, tzinfo=UTC),
        datetime(2026, 12, 2, 9, 30, 1, 7, tzinfo=UTC),
        datetime(2026, 6, 2, 10, 30, tzinfo=timezone(timedelta(hours=1))),
    ],
)
@pytest.mark.parametrize("actor", [CREW, None])
def test_it_is_what_the_model_writes(moment: datetime, actor: Principal | None) -> None:
    document = event_document(
        type=EventType.CASE_SUBMITTED, source="triage_api", occurred_at=moment,
        subject_id="case-1", actor=actor, data=DATA,
    )  # fmt: skip
    model = Event(
        id=document["id"], type=EventType.CASE_SUBMITTED, source="triage_api",
        occurred_at=moment, subject_id="case-1",
        actor=None if actor is None else EventActor.of(actor), data=DATA,
    )  # fmt: skip
    assert document == model.model_dump(mode="json")
    assert Event.model_validate(document) == model


def test_every_document_has_its_own_id() -> None:
    ids = {
        event_document(type="case.viewed", source="triage_api", occurred_at=datetime.now(UTC),
                       subject_id="case-1", actor=CREW, data={})["id"]
        for _ in range(50)
    }  # fmt: skip
    assert len(ids) == 50
