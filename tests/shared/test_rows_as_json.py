"""Rows riding as one JSON document (PostgreSQL) are stored exactly as the plain insert
stores them: every column type, awkward strings and numbers, JSON documents and their
`null`, times in any zone. What JSON cannot carry is refused, never stored as something
else."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from services.shared.db.base import table_of
from services.shared.db.engine import create_engine
from services.shared.db.models import TriageCase
from services.shared.db.session import (
    create_sessionmaker,
    insert_at_commit,
    notify_at_commit,
    unit_of_work,
)
from tests.support import statements_sent

pytestmark = pytest.mark.postgres

_CASES = insert(table_of(TriageCase))
_COLUMNS = [column.name for column in table_of(TriageCase).c]
# A row's own keys: unique a row, so the two ways' rows are told apart by these alone.
_KEYS = {"id", "reference", "idempotency_key"}
AT = datetime(2026, 12, 5, 9, 30, 15, 123456, tzinfo=UTC)


@pytest.fixture
async def engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(postgres_url)
    yield engine
    await engine.dispose()


def case_row(**values: Any) -> dict[str, Any]:
    tag = uuid.uuid4().hex
    row: dict[str, Any] = {
        "id": tag, "reference": tag[:16], "paramedic_id": "crew-json",
        "paramedic_name": "Crew", "idempotency_key": tag, "request_fingerprint": "f",
        "status": "queued", "priority": 2, "call_category": "C2", "cad_reference": "CAD-1",
        "callsign": "NE23", "location_lat": None, "location_lon": None, "age_years": None,
        "sex": "female", "nhs_number": None, "presenting_complaint": "fall",
        "requested_specialty": "frailty", "handover_format": None, "handover_text": None,
        "proposed_disposition": None, "reported_risk_flags": [], "risk_flags": [],
        "observations": None, "news2": None, "assigned_consultant_id": None,
        "assigned_consultant_name": None, "advice": None, "cancel_reason": None,
        "advice_followed": None, "not_followed_reason": None, "created_at": AT,
        "updated_at": AT, "version": 1, "router_version": 0, "event_seq": 1,
    }  # fmt: skip
    row.update(values)
    return row


async def riding(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """The rows written at the commit with a notification: as the riding JSON document."""
    await insert_at_commit(session, _CASES, rows)
    notify_at_commit(session.sync_session, "reach_json_rows", "test")


async def stored(engine: AsyncEngine, case_id: str) -> dict[str, tuple[bool, str | None]]:
    """Each column as PostgreSQL holds it: whether it is SQL NULL, and its text."""
    selected = ", ".join(f"{name} IS NULL, {name}::text" for name in _COLUMNS)
    async with engine.connect() as connection:
        result = await connection.execute(
            text(f"SELECT {selected} FROM triage_case WHERE id = :id"),  # noqa: S608 -- our names
            {"id": case_id},
        )
        values = result.one()
    return {
        name: (values[2 * n], values[2 * n + 1])
        for n, name in enumerate(_COLUMNS)
        if name not in _KEYS
    }


AWKWARD: list[dict[str, Any]] = [
    # strings: quotes, backslashes, an escape that is not one, JSON-looking text, non-ASCII
    {
        "handover_text": 'She said "I\'m fine" \\ then fell\n\ttwice \\u0000 {"a": [1]}',
        "paramedic_name": "Zoë Ó'Brien-Łukasz 救护 🚑",
        "cancel_reason": "",
        "not_followed_reason": "  spaced  ",
    },
    # numbers: the shortest forms, the extremes of a double, a negative, a large integer
    {
        "location_lat": 51.507351,
        "location_lon": -0.127758,
        "age_years": 2_147_483_647,
        "priority": -1,
    },
    {"location_lat": 0.1, "location_lon": 1.7976931348623157e308},
    {"location_lat": 5e-324, "location_lon": 1e-7},
    {"location_lat": 123456789.12345678, "location_lon": -179.99999999999997},
    # booleans and JSON documents, nested, with a null inside and non-string keys
    {
        "advice_followed": False,
        "observations": {"pulse": 88, "temperature": 36.6, "note": None, "on_oxygen": True},
        "news2": {"score": 5, "subscores": {"pulse": 1}, "flags": [None, "a", 2.5]},
        "advice": {1: "one", "nested": {"deep": [{"x": "y"}]}},
        "reported_risk_flags": ["cannot_walk", "lives_alone"],
    },
    {"advice_followed": True, "advice": "a JSON string", "observations": []},
    # times in other zones: the same instant is stored
    {
        "created_at": datetime(2026, 6, 1, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=5))),
        "updated_at": datetime(2026, 3, 29, 0, 59, 0, tzinfo=timezone(timedelta(hours=-3.5))),
    },
]


@pytest.mark.parametrize("values", AWKWARD)
async def test_a_row_riding_is_stored_as_the_plain_insert_stores_it(
    engine: AsyncEngine, values: dict[str, Any]
) -> None:
    maker = create_sessionmaker(engine)
    plain, rode = case_row(**values), case_row(**values)
    with statements_sent(engine, lambda sql: "INSERT INTO triage_case" in sql) as sent:
        async with unit_of_work(maker) as session:
            await session.execute(_CASES, plain)
            await riding(session, [rode])
    assert len(sent) == 2
    assert "jsonb_populate_recordset" in sent[1]  # it did ride as the document
    assert await stored(engine, rode["id"]) == await stored(engine, plain["id"])


async def test_a_json_null_is_the_document_null_and_a_missing_value_sql_null(
    engine: AsyncEngine,
) -> None:
    """None in a JSON document column is the document `null`, as SQLAlchemy's JSON type
    writes it; None in any other column is SQL NULL."""
    maker = create_sessionmaker(engine)
    rode = case_row(advice=None, handover_text=None)
    async with unit_of_work(maker) as session:
        await riding(session, [rode])
    columns = await stored(engine, rode["id"])
    assert columns["advice"] == (False, "null")
    assert columns["handover_text"] == (True, None)


async def test_many_rows_ride_as_one_statement_each_stored_as_given(engine: AsyncEngine) -> None:
    maker = create_sessionmaker(engine)
    rows = [case_row(priority=n, age_years=n) for n in range(300)]
    with statements_sent(engine, lambda sql: "INSERT INTO triage_case" in sql) as sent:
        async with unit_of_work(maker) as session:
            await riding(session, rows)
    assert len(sent) == 1
    for row in rows[::37]:
        assert (await stored(engine, row["id"]))["age_years"] == (False, str(row["age_years"]))


@pytest.mark.parametrize(
    ("values", "refusal"),
    [
        ({"created_at": datetime(2026, 12, 5, 9, 30)}, "naive datetimes"),  # noqa: DTZ001
        ({"location_lat": float("nan")}, "location_lat is not a finite number"),
        ({"location_lon": float("-inf")}, "location_lon is not a finite number"),
    ],
)
async def test_what_json_cannot_carry_is_refused_and_nothing_is_written(
    engine: AsyncEngine, values: dict[str, Any], refusal: str
) -> None:
    maker = create_sessionmaker(engine)
    good, bad = case_row(), case_row(**values)
    with pytest.raises(ValueError, match=refusal):
        async with unit_of_work(maker) as session:
            await riding(session, [good, bad])
    async with engine.connect() as connection:
        found = await connection.execute(
            text("SELECT count(*) FROM triage_case WHERE id IN (:good, :bad)"),
            {"good": good["id"], "bad": bad["id"]},
        )
        assert found.scalar_one() == 0


async def test_minus_zero_arrives_as_zero(engine: AsyncEngine) -> None:
    """The one float a JSON number does not keep as given (PostgreSQL reads JSON numbers
    as `numeric`, which has no negative zero): a position on the meridian either way."""
    maker = create_sessionmaker(engine)
    rode = case_row(location_lat=51.5, location_lon=-0.0)
    async with unit_of_work(maker) as session:
        await riding(session, [rode])
    assert (await stored(engine, rode["id"]))["location_lon"] == (False, "0")
