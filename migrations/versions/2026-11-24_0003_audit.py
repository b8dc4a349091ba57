"""audit: the hash-chained trail, its head and checkpoint, dispositions and inbox

Revision ID: 0003
Revises: 0002
Created: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# JSON documents: JSONB on PostgreSQL, JSON text on SQLite.
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
# Entry numbers: 64-bit on PostgreSQL; SQLite's INTEGER is 64-bit already.
SEQUENCE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", SEQUENCE, nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_chain_head")),
    )
    op.create_table(
        "audit_checkpoint",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", SEQUENCE, nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_checkpoint")),
    )
    op.create_table(
        "audit_disposition",
        sa.Column("case_id", sa.String(length=64), nullable=False),
        sa.Column("reference", sa.String(length=16), nullable=True),
        sa.Column("specialty", sa.String(length=32), nullable=True),
        sa.Column("call_category", sa.String(length=4), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("advised_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("consultant_id", sa.String(length=128), nullable=True),
        sa.Column("disposition", sa.String(length=16), nullable=True),
        sa.Column("pathway", sa.String(length=32), nullable=True),
        sa.Column("risk_override", sa.Boolean(), nullable=False),
        sa.Column("followed", sa.Boolean(), nullable=True),
        sa.Column("accept_seconds", sa.Float(), nullable=True),
        sa.Column("advice_seconds", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("case_id", name=op.f("pk_audit_disposition")),
    )
    with op.batch_alter_table("audit_disposition", schema=None) as batch_op:
        batch_op.create_index("ix_audit_disposition_advised", ["advised_at"], unique=False)
        batch_op.create_index("ix_audit_disposition_created", ["created_at"], unique=False)

    op.create_table(
        "audit_entry",
        sa.Column("seq", SEQUENCE, autoincrement=False, nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("subject_id", sa.String(length=64), nullable=False),
        sa.Column("actor_sub", sa.String(length=128), nullable=True),
        sa.Column("actor_role", sa.String(length=32), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("details", JSON_DOC, nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_entry")),
        sa.UniqueConstraint("event_id", name=op.f("uq_audit_entry_event_id")),
    )
    with op.batch_alter_table("audit_entry", schema=None) as batch_op:
        batch_op.create_index("ix_audit_entry_subject", ["subject_id", "seq"], unique=False)
        batch_op.create_index("ix_audit_entry_type", ["event_type", "seq"], unique=False)

    op.create_table(
        "audit_inbox",
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_audit_inbox")),
    )


def downgrade() -> None:
    op.drop_table("audit_inbox")
    with op.batch_alter_table("audit_entry", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_entry_type")
        batch_op.drop_index("ix_audit_entry_subject")

    op.drop_table("audit_entry")
    with op.batch_alter_table("audit_disposition", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_disposition_created")
        batch_op.drop_index("ix_audit_disposition_advised")

    op.drop_table("audit_disposition")
    op.drop_table("audit_checkpoint")
    op.drop_table("audit_chain_head")
