"""Rows as JSON: rows inserted on PostgreSQL with one parameter for all of them.

`INSERT ... SELECT FROM jsonb_populate_recordset(NULL::<table>, :rows)`: one statement
text whatever the number of rows, built and prepared once, and one parameter, a JSON
document of the rows, serialised in one call. The document is read into the table's own
row type, so each value is parsed by its column's type, and a string longer than its
column is refused as the plain insert refuses it. The rows keep the order given (`WITH
ORDINALITY`), so an identity column numbers them in that order. Three kinds of insert go
this way: the rows that ride in the statement that wakes the delivery lanes (a commit's
outbox rows, a batch's new cases and first rows: `services/shared/db/session.py`), many
rows inserted unless their keys are taken (`insert_many_if_absent`: the router's new
cases, inbox records, audit's new outcome records), and many rows inserted
(`insert_many`: audit's trail entries).

Why one document, not one array a column nor a multi-row `VALUES`: each value bound
apart cost the process a bind processor and an encoding (SQLAlchemy's, then asyncpg's),
and each JSON document column's value was serialised on its own. Measured apart
(`bench.statement_costs`), a batch of new cases written at its commit took 638 us of
the process's CPU as arrays and 428 us as documents, and one to eight cases inserted
unless taken 493 us as `VALUES` and 349 us as a document. The database pays some of it
back (reading the document, then each value from its text): 5-18% more of its CPU for
those statements.

Rows may go as JSON only where that writes what the plain insert would
(`can_go_as_json`): every row gives the same columns, and every column whose default is
computed here is among them (SQLAlchemy fills those in only for the plain insert). What
the plain insert's column types do on the way in is done here: a time must be
timezone-aware (`UtcDateTime`), and None in a JSON document column is the JSON `null`,
not SQL NULL (as SQLAlchemy's JSON type writes it). A float goes through a JSON number,
which holds it exactly, except that -0.0 arrives as 0.0; NaN and infinity, which JSON
cannot carry, are refused.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    Float,
    Select,
    TableClause,
    Text,
    bindparam,
    cast,
    func,
    literal_column,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB

from services.shared.db.base import UtcDateTime
from services.shared.jsoncodec import json_text

Row = dict[str, Any]

_PLAIN_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def can_go_as_json(table: TableClause, rows: Sequence[Row]) -> bool:
    """Whether `rows` inserted as one JSON document write what the plain insert would."""
    if not rows:
        return False
    columns = rows[0].keys()
    if any(row.keys() != columns for row in rows):
        return False
    return _defaults_given(table, tuple(columns))


@functools.lru_cache(maxsize=256)  # a few shapes a table in a served process
def _defaults_given(table: TableClause, columns: tuple[str, ...]) -> bool:
    # A Column's `default` is the one computed here (a server default is the database's).
    return all(
        column.name in columns for column in table.c if getattr(column, "default", None) is not None
    )


def rows_from_json(table: TableClause, columns: Sequence[str], *, prefix: str = "") -> Select[Any]:
    """The rows of `json_parameter(table, rows, prefix=prefix)`, in the order given, as a
    select to insert from (`Insert.from_select(columns, ...)`)."""
    # `NULL::<name>` finds the row type by the search path, and a type of PostgreSQL's own
    # of that name (`path`, `point`) first: reach's tables are plain, prefixed names.
    if table.schema is not None or not _PLAIN_NAME.fullmatch(table.name):
        raise ValueError(f"{table.name!r} is not a plain table name: its row type needs quoting")
    given = func.jsonb_populate_recordset(
        literal_column(f"NULL::{table.name}"),
        cast(bindparam(f"{prefix}rows", type_=Text), JSONB),
    ).table_valued(*columns, with_ordinality="ordinality", name="given")
    return select(*(_as_written(table, given.c[column], column) for column in columns)).order_by(
        given.c.ordinality
    )


def _as_written(table: TableClause, value: ColumnElement[Any], column: str) -> ColumnElement[Any]:
    # A JSON `null` read into a jsonb column is SQL NULL; the plain insert writes it as the
    # JSON document `null`.
    if isinstance(table.c[column].type, JSON):
        return func.coalesce(value, literal_column("'null'::jsonb"))
    return value


def json_parameter(table: TableClause, rows: Sequence[Row], *, prefix: str = "") -> Row:
    """The parameter of `rows_from_json`: the rows as one JSON document."""
    times, numbers = _checked_columns(table, tuple(rows[0]))
    for row in rows:
        for column in times:
            value = row[column]
            if value is not None and value.tzinfo is None:
                raise ValueError("naive datetimes are not stored; pass a timezone-aware time")
        for column in numbers:
            value = row[column]
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{column} is not a finite number, which JSON cannot carry")
    return {f"{prefix}rows": json_text(rows)}


@functools.lru_cache(maxsize=256)
def _checked_columns(
    table: TableClause, columns: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The columns whose times must be aware (a naive one would be read in the database
    session's time zone), and those whose numbers must be finite (JSON has no NaN nor
    infinity: the encoder would write `null`)."""
    types = {column: table.c[column].type for column in columns}
    return (
        tuple(column for column, type_ in types.items() if isinstance(type_, UtcDateTime)),
        tuple(column for column, type_ in types.items() if isinstance(type_, Float)),
    )
