"""Statements whose SQL differs between SQLite and PostgreSQL."""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from services.shared.db.rows_as_json import can_go_as_json, json_parameter, rows_from_json


def dialect_name(session: AsyncSession) -> str:
    bind = session.get_bind()
    return bind.dialect.name


@functools.cache
def insert_ignoring_conflicts(dialect: str, table: Table) -> Any:
    """The dialect's `INSERT ... ON CONFLICT DO NOTHING` on `table`, to run as it is or to
    build on (`from_select`, `returning`)."""
    # Built once per table: the values travel as parameters, so the compiled statement
    # is reused from SQLAlchemy's cache on every call.
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


@functools.cache
def _insert_ignoring_conflicts_returning(dialect: str, table: Table, column: str) -> Any:
    return insert_ignoring_conflicts(dialect, table).returning(table.c[column])


@functools.cache
def insert_or_lock(dialect: str, table: Table, touch: str) -> Any:
    """The dialect's `INSERT ... ON CONFLICT (primary key) DO UPDATE ... RETURNING` every
    column: a row of the values whose key is new is made, and a row whose key exists is
    locked and has its `touch` column set (nothing else), so each comes back as it now
    is. The keys of one run must be distinct (PostgreSQL refuses to update a row twice in
    one statement).

    Unlike a read of the keys (`IN (...)`), the conflict is found in the primary key's
    index whatever plan PostgreSQL keeps for the statement."""
    insert = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    (key,) = table.primary_key.columns
    return insert.on_conflict_do_update(
        index_elements=[key], set_={touch: insert.excluded[touch]}
    ).returning(*table.c)


async def insert_if_absent(session: AsyncSession, model: Any, values: dict[str, Any]) -> bool:
    """Insert a row unless one of its unique keys exists; True if this call inserted it.

    Concurrent callers with the same key serialise on the key: exactly one gets True.
    """
    statement = insert_ignoring_conflicts(dialect_name(session), model.__table__)
    result = await session.execute(statement, values)
    return bool(getattr(result, "rowcount", 0) == 1)


async def insert_many(session: AsyncSession, model: Any, rows: list[dict[str, Any]]) -> None:
    """Insert `rows` in one statement, in the order given; a unique key taken fails it all.

    On PostgreSQL the rows go as one JSON document where they can
    (`services/shared/db/rows_as_json.py`): one execution of one statement, where the
    driver's `executemany` runs the insert once a row (each run planned, started and
    finished by the database apart, each row's values bound apart by the process). On
    SQLite, an `executemany` in the process is already one call."""
    if not rows:
        return
    dialect, table = dialect_name(session), model.__table__
    if dialect == "postgresql" and can_go_as_json(table, rows):
        await session.execute(_insert_from_json(table, tuple(rows[0])), json_parameter(table, rows))
    else:
        await session.execute(insert(table), rows)


@functools.lru_cache(maxsize=64)  # a few shapes a table in a served process
def _insert_from_json(table: Table, columns: tuple[str, ...]) -> Any:
    """PostgreSQL's insert of `json_parameter`'s rows, to run as it is or to build on."""
    return postgresql.insert(table).from_select(list(columns), rows_from_json(table, columns))


async def insert_many_if_absent(
    session: AsyncSession, model: Any, rows: list[dict[str, Any]], *, returning: str
) -> set[Any]:
    """Insert, in one statement, each row none of whose unique keys exists (nor is taken
    by an earlier row of `rows`); the `returning` column of the rows inserted.

    On PostgreSQL the rows go as one JSON document where they can
    (`services/shared/db/rows_as_json.py`): one statement text whatever their number, and
    one parameter, where a multi-row `VALUES` binds each value apart."""
    if not rows:
        return set()
    dialect, table = dialect_name(session), model.__table__
    if dialect == "postgresql" and can_go_as_json(table, rows):
        statement = _insert_from_json_ignoring_conflicts(table, tuple(rows[0]), returning)
        result = await session.execute(statement, json_parameter(table, rows))
    else:
        statement = _insert_ignoring_conflicts_returning(dialect, table, returning)
        result = await session.execute(statement, rows)
    return set(result.scalars())


@functools.lru_cache(maxsize=64)  # a few shapes a table in a served process
def _insert_from_json_ignoring_conflicts(
    table: Table, columns: tuple[str, ...], returning: str
) -> Any:
    return _insert_from_json(table, columns).on_conflict_do_nothing().returning(table.c[returning])
