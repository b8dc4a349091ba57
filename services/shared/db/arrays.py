"""Rows as arrays: rows inserted on PostgreSQL with one array parameter a column.

A commit's outbox rows, and a batch's first rows, ride in the statement that wakes the
delivery lanes (`services/shared/db/session.py`) as `INSERT ... SELECT FROM unnest(:a,
:b, ...)`: one statement text whatever the number of rows, built and prepared once. The
rows keep the order given (`WITH ORDINALITY`), so an identity column numbers them in
that order.

Rows may go as arrays only where that writes what the plain insert would
(`can_go_as_arrays`): every row gives the same columns, and every column whose default
is computed here is among them (SQLAlchemy fills those in only for the plain insert).

Not everywhere: a batch of new cases (35 columns) inserted unless taken, once each size
of batch was prepared, cost the database 8-18% more as arrays than as a multi-row
`VALUES`, and this process no less (`bench/statement_costs.py`, "a batch of new cases",
three runs), so `insert_many_if_absent` keeps `VALUES`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, String, TableClause, Text, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY

Row = dict[str, Any]


def can_go_as_arrays(table: TableClause, rows: Sequence[Row]) -> bool:
    """Whether `rows` inserted as arrays write what the plain insert of them would."""
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


def rows_from_arrays(
    table: TableClause, columns: Sequence[str], *, prefix: str = ""
) -> Select[Any]:
    """The rows of `array_parameters(rows, columns, prefix=prefix)`, in the order given,
    as a select to insert from (`Insert.from_select(columns, ...)`)."""
    arrays = [
        bindparam(f"{prefix}{column}", type_=ARRAY(_element_type(table.c[column]), dimensions=1))
        for column in columns
    ]
    unnested = (
        func.unnest(*arrays).table_valued(*columns, with_ordinality="position").render_derived()
    )
    return select(*(unnested.c[column] for column in columns)).order_by(unnested.c.position)


def array_parameters(rows: Sequence[Row], columns: Sequence[str], *, prefix: str = "") -> Row:
    """Each column's values, one list a column, for `rows_from_arrays`."""
    return {f"{prefix}{column}": [row[column] for row in rows] for column in columns}


def _element_type(column: Any) -> Any:
    """An array element's type for `column`: a string without its length, since a cast to
    `varchar(n)` cuts a longer value short where the insert's own would refuse it."""
    return Text() if isinstance(column.type, String) else column.type
