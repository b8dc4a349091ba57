"""JSON columns and peer posts go through `jsoncodec` (orjson): what it writes reads back
as the standard library's JSON would, in the database and over the wire."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from services.shared.db.engine import create_engine
from services.shared.db.models import TriageOutbox
from services.shared.db.session import create_sessionmaker, unit_of_work
from services.shared.domain.vocabulary import CaseStatus
from services.shared.jsoncodec import json_bytes, json_text, load_json

DOCUMENT: dict[Any, Any] = {
    "status": CaseStatus.OFFERED,  # a StrEnum is written as its value
    "news2": {"score": 7, "risk": "high", "parameters": [{"name": "pulse", "points": 3}]},
    "temperature": 38.5,
    "note": 'Patient says "it\'s 10/10" \u2014 see handover',
    "none": None,
    3: "an integer key",
}


def test_it_reads_back_as_the_standard_library_writes() -> None:
    expected = json.loads(json.dumps(DOCUMENT))
    assert load_json(json_text(DOCUMENT)) == expected
    assert json.loads(json_bytes(DOCUMENT)) == expected
    assert load_json(json.dumps(DOCUMENT)) == expected


def test_what_it_cannot_encode_is_refused_not_guessed() -> None:
    with pytest.raises(TypeError):
        json_text({"ids": {1, 2}})


async def test_json_columns_round_trip_through_the_database(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        maker = create_sessionmaker(engine)
        async with unit_of_work(maker) as session:
            now = datetime.now(UTC)
            session.add(TriageOutbox(event_id="event-json", event_type="case.submitted",
                                     destination="audit", payload=DOCUMENT, created_at=now,
                                     next_attempt_at=now, attempts=0))  # fmt: skip
        async with unit_of_work(maker) as session:
            stored = await session.scalar(
                select(TriageOutbox.payload).where(TriageOutbox.event_id == "event-json")
            )
    finally:
        await engine.dispose()
    assert stored == json.loads(json.dumps(DOCUMENT))
