"""outbox: no index on event_id

No query looks an outbox row up by its event id: deliveries claim rows through the
pending index, and receivers deduplicate by event id in their own inboxes. The index
cost each outbox row two entries (one when written, one when marked delivered, since
that update cannot be a heap-only one) and nothing else used it. An operator looking
for an event reads a few days of rows (delivered ones are purged after three).

Revision ID: 0006
Revises: 0005
Created: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OUTBOXES = ("triage_outbox", "consult_outbox")


def upgrade() -> None:
    for table in OUTBOXES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(f"ix_{table}_event_id")


def downgrade() -> None:
    for table in OUTBOXES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(f"ix_{table}_event_id", ["event_id"], unique=False)
