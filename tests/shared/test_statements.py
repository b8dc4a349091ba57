"""Inserting many rows, and many unless their keys are taken, on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.shared.db.engine import create_engine
from services.shared.db.models import TriageCase, TriageObservation
from services.shared.db.session import create_sessionmaker, unit_of_work
from services.shared.db.statements import insert_many, insert_many_if_absent
from tests.support import statements_sent, truncate_all

AT = datetime(2026, 12, 4, 9, 30, tzinfo=UTC)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


def case_row(reference: str, **overrides: Any) -> dict[str, Any]:
    """A whole case row, with every kind of column a case has, defaults given."""
    case_id = str(uuid.uuid4())
    row: dict[str, Any] = {
        "id": case_id, "reference": reference, "paramedic_id": "crew-ne23",
        "paramedic_name": "Crew NE23", "idempotency_key": f"key-{case_id}",
        "request_fingerprint": "f" * 64, "status": "queued", "priority": 2,
        "call_category": "C2", "cad_reference": "CAD-123456", "callsign": "NE23",
        "location_lat": 51.5194, "location_lon": None, "age_years": 82, "sex": "female",
        "nhs_number": None, "presenting_complaint": "fall", "requested_specialty": "frailty",
        "handover_format": "ATMIST", "handover_text": None, "proposed_disposition": "home",
        "reported_risk_flags": ["cannot_walk"], "risk_flags": ["cannot_walk", "low_spo2"],
        "observations": {"pulse": 95, "temperature": 38.2, "on_oxygen": False},
        "news2": None, "assigned_consultant_id": None, "assigned_consultant_name": None,
        "advice": None, "cancel_reason": None, "advice_followed": None,
        "not_followed_reason": None, "created_at": AT, "updated_at": AT, "version": 1,
        "router_version": 0, "event_seq": 0,
    }  # fmt: skip
    row.update(overrides)
    return row


def varied_cases(prefix: str) -> list[dict[str, Any]]:
    """Two cases with every kind of value a column holds: set and unset, empty and nested."""
    return [
        case_row(f"{prefix}-01"),
        case_row(
            f"{prefix}-02", risk_flags=[], news2={"score": 5, "subscores": {"pulse": 1}},
            location_lon=-0.059, advice_followed=True, handover_text="Fell at home",
        ),
    ]  # fmt: skip


async def assert_stored_as_given(engine: AsyncEngine, given: list[dict[str, Any]]) -> None:
    cases = await stored(engine)
    for row in given:
        case = cases[row["id"]]
        assert {column: getattr(case, column) for column in row} == row


async def insert(engine: AsyncEngine, rows: list[dict[str, Any]]) -> set[Any]:
    async with unit_of_work(create_sessionmaker(engine)) as session:
        return await insert_many_if_absent(session, TriageCase, rows, returning="id")


async def stored(engine: AsyncEngine) -> dict[str, TriageCase]:
    async with unit_of_work(create_sessionmaker(engine)) as session:
        cases = (await session.execute(select(TriageCase))).scalars()
        return {case.id: case for case in cases}


class TestInsertManyIfAbsent:
    async def test_rows_whose_keys_are_taken_are_skipped_and_the_rest_returned(
        self, engine: AsyncEngine
    ) -> None:
        taken = case_row("R-TAKN-01")
        await insert(engine, [taken])
        first, again, later, fresh = (
            case_row("R-FRST-01"),
            case_row("R-TAKN-01"),  # the reference an earlier batch took
            case_row("R-FRST-01"),  # the reference an earlier row of this batch takes
            case_row("R-FRSH-01"),
        )
        inserted = await insert(engine, [first, again, later, fresh])
        assert inserted == {first["id"], fresh["id"]}
        assert set(await stored(engine)) == {taken["id"], first["id"], fresh["id"]}

    async def test_rows_leaving_a_default_to_be_computed_are_given_it(
        self, engine: AsyncEngine
    ) -> None:
        rows = [case_row(f"R-DFLT-0{n}") for n in range(2)]
        for row in rows:
            del row["version"]  # its default is SQLAlchemy's to fill in, not the database's
        assert await insert(engine, rows) == {row["id"] for row in rows}
        assert [case.version for case in (await stored(engine)).values()] == [1, 1]

    async def test_every_column_reads_back_as_given(self, engine: AsyncEngine) -> None:
        given = varied_cases("R-RDBK")
        await insert(engine, given)
        await assert_stored_as_given(engine, given)


async def insert_all(engine: AsyncEngine, rows: list[dict[str, Any]]) -> None:
    async with unit_of_work(create_sessionmaker(engine)) as session:
        await insert_many(session, TriageCase, rows)


class TestInsertMany:
    async def test_every_row_is_stored_as_given_in_one_statement(self, engine: AsyncEngine) -> None:
        given = [
            *varied_cases("R-MANY"),
            case_row("R-MANY-03", observations=None, created_at=AT.replace(microsecond=7)),
        ]
        with statements_sent(engine, lambda sql: "triage_case" in sql) as sent:
            await insert_all(engine, given)
        assert len(sent) == 1, sent
        if engine.dialect.name == "postgresql":
            assert "jsonb_populate_recordset" in sent[0]
        assert set(await stored(engine)) == {row["id"] for row in given}
        await assert_stored_as_given(engine, given)

    async def test_rows_are_numbered_in_the_order_given(self, engine: AsyncEngine) -> None:
        case = case_row("R-ORDR-01")
        await insert_all(engine, [case])
        names = ["crew-c", "crew-a", "crew-b", "crew-e", "crew-d"]
        rows = [
            {"case_id": case["id"], "recorded_at": AT, "recorded_by": name,
             "values": {"pulse": 90 + number}, "news2": None}
            for number, name in enumerate(names)
        ]  # fmt: skip
        async with unit_of_work(create_sessionmaker(engine)) as session:
            await insert_many(session, TriageObservation, rows)
        async with unit_of_work(create_sessionmaker(engine)) as session:
            stored_rows = await session.execute(
                select(TriageObservation.recorded_by).order_by(TriageObservation.id)
            )
            assert list(stored_rows.scalars()) == names

    async def test_a_key_taken_fails_them_all(self, engine: AsyncEngine) -> None:
        await insert_all(engine, [case_row("R-TAKN-01")])
        with pytest.raises(IntegrityError):
            await insert_all(engine, [case_row("R-NEW-01"), case_row("R-TAKN-01")])
        assert [case.reference for case in (await stored(engine)).values()] == ["R-TAKN-01"]

    async def test_rows_leaving_a_default_to_be_computed_are_given_it(
        self, engine: AsyncEngine
    ) -> None:
        rows = [case_row(f"R-DFLT-0{n}") for n in range(2)]
        for row in rows:
            del row["version"]  # its default is SQLAlchemy's to fill in, not the database's
        with statements_sent(engine, lambda sql: "triage_case" in sql) as sent:
            await insert_all(engine, rows)
        assert all("jsonb_populate_recordset" not in statement for statement in sent)
        assert [case.version for case in (await stored(engine)).values()] == [1, 1]


@pytest.fixture
async def postgres_engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    await truncate_all(postgres_url)
    engine = create_engine(postgres_url)
    yield engine
    await engine.dispose()


@pytest.mark.postgres
class TestInsertManyIfAbsentOnPostgres:
    async def test_a_value_too_long_is_refused_not_cut_short(
        self, postgres_engine: AsyncEngine
    ) -> None:
        # SQLite keeps a string of any length; PostgreSQL refuses one longer than its column.
        rows = [case_row("R-LONG-01"), case_row("R-TOO-LONG-FOR-ITS-COLUMN")]
        with pytest.raises(DBAPIError, match="too long"):
            await insert(postgres_engine, rows)
        assert await stored(postgres_engine) == {}

    async def test_rows_go_as_one_document_unless_a_default_is_left_to_compute(
        self, postgres_engine: AsyncEngine
    ) -> None:
        # Only the plain insert fills in a default computed here (`can_go_as_json`).
        left_out = case_row("R-DFLT-01")
        del left_out["version"]
        with statements_sent(postgres_engine, lambda sql: "INTO triage_case" in sql) as sent:
            await insert(postgres_engine, [case_row("R-JSON-01"), case_row("R-JSON-02")])
            await insert(postgres_engine, [left_out])
        assert "jsonb_populate_recordset" in sent[0]
        assert "VALUES" in sent[1]
        assert [case.version for case in (await stored(postgres_engine)).values()] == [1, 1, 1]
