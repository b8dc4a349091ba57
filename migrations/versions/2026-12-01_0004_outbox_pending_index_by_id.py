"""outbox: the pending-rows index ordered by id, the order deliveries claim rows in

The claim query takes the oldest due rows by id. With the pending index keyed on
(next_attempt_at, id), SQLite's planner preferred to scan the whole table in id order,
so each claim cost time in proportion to every row ever delivered. Keyed on id (and
still holding only undelivered rows) it is read in claim order and stays small.

Revision ID: 0004
Revises: 0003
Created: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OUTBOXES = ("triage_outbox", "consult_outbox")
PENDING = "delivered_at IS NULL AND dead_at IS NULL"


def _pending_index(table: str, columns: list[str]) -> None:
    with op.batch_alter_table(table, schema=None) as batch_op:
        batch_op.drop_index(f"ix_{table}_pending")
        batch_op.create_index(
            f"ix_{table}_pending",
            columns,
            unique=False,
            postgresql_where=sa.text(PENDING),
            sqlite_where=sa.text(PENDING),
        )


def upgrade() -> None:
    for table in OUTBOXES:
        _pending_index(table, ["id"])


def downgrade() -> None:
    for table in OUTBOXES:
        _pending_index(table, ["next_attempt_at", "id"])
