"""How a batch of events fills in the outcome records: a case submitted in the batch has
its record written whole in one insert; the others are made or found, locked and read in
one statement through the primary key's index, then written back in one; a record stays
locked until its batch commits."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from services.audit import dispositions
from services.shared.db.models import AuditDisposition
from services.shared.db.session import unit_of_work
from services.shared.resources import Resources
from services.shared.schemas.events import Event
from tests.audit.conftest import event
from tests.support import statements_sent

AT = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
LATER = datetime(2026, 11, 20, 10, 4, tzinfo=UTC)


def submitted(case_id: str) -> Event:
    return Event.model_validate(
        event("case.submitted", case_id, AT, reference=f"R-{case_id}", specialty="frailty",
              call_category="C3", created_at=AT.isoformat())
    )  # fmt: skip


def cancelled(case_id: str) -> Event:
    return Event.model_validate(event("case.cancelled", case_id, AT))


def _of_dispositions(statement: str) -> bool:
    return "audit_disposition" in statement


def accepted(case_id: str) -> Event:
    return Event.model_validate(
        event("consult.accepted", case_id, LATER, accepted_at=LATER.isoformat(),
              consultant={"id": "dr-okafor", "name": "Dr Okafor"})
    )  # fmt: skip


async def _records(resources: Resources) -> dict[str, AuditDisposition]:
    async with unit_of_work(resources.sessionmaker) as session:
        rows = await session.execute(select(AuditDisposition))
        return {row.case_id: row for row in rows.scalars()}


async def test_the_records_of_cases_submitted_in_a_batch_are_written_whole_in_one_statement(
    resources: Resources,
) -> None:
    with statements_sent(resources.engine, _of_dispositions) as sent:
        async with unit_of_work(resources.sessionmaker) as session:
            batch = [submitted("b"), submitted("c"), cancelled("c")]
            await dispositions.record_many(session, batch, now=AT)
    # Written once each: no lock, and nothing written back over the rows just made.
    assert len(sent) == 1, sent
    made = " ".join(sent[0].split())
    assert made.startswith("INSERT INTO audit_disposition")
    assert "ON CONFLICT DO NOTHING" in made
    records = await _records(resources)
    assert sorted(records) == ["b", "c"]
    assert [records[case_id].reference for case_id in "bc"] == ["R-b", "R-c"]
    assert [records[case_id].specialty for case_id in "bc"] == ["frailty", "frailty"]
    assert [records[case_id].created_at for case_id in "bc"] == [AT, AT]
    assert [records[case_id].cancelled_at is not None for case_id in "bc"] == [False, True]
    assert [records[case_id].updated_at for case_id in "bc"] == [AT, AT]


async def test_a_batch_finds_the_other_records_and_writes_them_back(
    resources: Resources,
) -> None:
    async with unit_of_work(resources.sessionmaker) as session:
        # "a" has a record already; so has "d", from its acceptance, which came first.
        await dispositions.record_many(session, [submitted("a"), accepted("d")], now=AT)
    with statements_sent(resources.engine, _of_dispositions) as sent:
        async with unit_of_work(resources.sessionmaker) as session:
            batch = [cancelled("a"), submitted("b"), submitted("d")]
            await dispositions.record_many(session, batch, now=LATER)
    assert len(sent) == 3, sent
    made, made_or_locked, written_back = (" ".join(statement.split()) for statement in sent)
    assert made.startswith("INSERT INTO audit_disposition")
    assert "ON CONFLICT DO NOTHING" in made
    assert made_or_locked.startswith("INSERT INTO audit_disposition")
    assert "ON CONFLICT (case_id) DO UPDATE" in made_or_locked
    assert "RETURNING" in made_or_locked
    assert written_back.startswith("UPDATE audit_disposition")
    records = await _records(resources)
    assert sorted(records) == ["a", "b", "d"]
    # What the earlier batch wrote was read back and kept; this batch's facts were added,
    # "d"'s submission too, though its record was there before it.
    assert [records[case_id].reference for case_id in "abd"] == ["R-a", "R-b", "R-d"]
    assert [records[case_id].cancelled_at is not None for case_id in "abd"] == [True, False, False]
    assert records["d"].consultant_id == "dr-okafor"
    assert records["d"].created_at == AT
    assert records["d"].accept_seconds == (LATER - AT).total_seconds()
    assert [records[case_id].updated_at for case_id in "abd"] == [LATER, LATER, LATER]


async def test_a_record_stays_locked_until_its_batch_commits(resources: Resources) -> None:
    if resources.engine.dialect.name == "sqlite":
        pytest.skip("SQLite has one writer: its transactions never wait on each other")
    async with unit_of_work(resources.sessionmaker) as session:
        await dispositions.record_many(session, [submitted("a")], now=AT)
    lock_now = text("SELECT case_id FROM audit_disposition WHERE case_id = 'a' FOR UPDATE NOWAIT")
    async with unit_of_work(resources.sessionmaker) as batch:
        await dispositions.record_many(batch, [cancelled("a")], now=AT)
        async with resources.engine.connect() as other:
            with pytest.raises(DBAPIError, match="could not obtain lock"):
                await other.execute(lock_now)
    async with resources.engine.connect() as other:
        assert (await other.execute(lock_now)).scalar_one() == "a"
