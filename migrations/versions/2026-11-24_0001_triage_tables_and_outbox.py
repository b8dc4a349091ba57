"""triage_api: cases, observations, the crew's stream, outbox and inbox

Revision ID: 0001
Revises:
Created: 2026-11-24 03:51:16.676869
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# JSON documents: JSONB on PostgreSQL, JSON text on SQLite.
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "triage_case",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("reference", sa.String(length=16), nullable=False),
        sa.Column("paramedic_id", sa.String(length=128), nullable=False),
        sa.Column("paramedic_name", sa.String(length=200), nullable=False),
        sa.Column("idempotency_key", sa.String(length=128), nullable=False),
        sa.Column("request_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("call_category", sa.String(length=4), nullable=False),
        sa.Column("cad_reference", sa.String(length=64), nullable=False),
        sa.Column("callsign", sa.String(length=32), nullable=False),
        sa.Column("location_lat", sa.Double(), nullable=True),
        sa.Column("location_lon", sa.Double(), nullable=True),
        sa.Column("age_years", sa.Integer(), nullable=True),
        sa.Column("sex", sa.String(length=8), nullable=False),
        sa.Column("nhs_number", sa.String(length=10), nullable=True),
        sa.Column("presenting_complaint", sa.String(length=32), nullable=False),
        sa.Column("requested_specialty", sa.String(length=32), nullable=False),
        sa.Column("handover_format", sa.String(length=8), nullable=True),
        sa.Column("handover_text", sa.Text(), nullable=True),
        sa.Column("proposed_disposition", sa.String(length=16), nullable=True),
        sa.Column("reported_risk_flags", JSON_DOC, nullable=False),
        sa.Column("risk_flags", JSON_DOC, nullable=False),
        sa.Column("observations", JSON_DOC, nullable=True),
        sa.Column("news2", JSON_DOC, nullable=True),
        sa.Column("assigned_consultant_id", sa.String(length=128), nullable=True),
        sa.Column("assigned_consultant_name", sa.String(length=200), nullable=True),
        sa.Column("advice", JSON_DOC, nullable=True),
        sa.Column("cancel_reason", sa.Text(), nullable=True),
        sa.Column("advice_followed", sa.Boolean(), nullable=True),
        sa.Column("not_followed_reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("router_version", sa.Integer(), nullable=False),
        sa.Column("event_seq", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_triage_case")),
        sa.UniqueConstraint(
            "paramedic_id",
            "idempotency_key",
            name=op.f("uq_triage_case_paramedic_id_idempotency_key"),
        ),
        sa.UniqueConstraint("reference", name=op.f("uq_triage_case_reference")),
    )
    with op.batch_alter_table("triage_case", schema=None) as batch_op:
        batch_op.create_index("ix_triage_case_created", ["created_at", "id"], unique=False)
        batch_op.create_index(
            "ix_triage_case_paramedic_created", ["paramedic_id", "created_at", "id"], unique=False
        )

    op.create_table(
        "triage_inbox",
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_triage_inbox")),
    )
    op.create_table(
        "triage_outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("destination", sa.String(length=32), nullable=False),
        sa.Column("payload", JSON_DOC, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dead_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_triage_outbox")),
    )
    with op.batch_alter_table("triage_outbox", schema=None) as batch_op:
        batch_op.create_index("ix_triage_outbox_event_id", ["event_id"], unique=False)
        batch_op.create_index(
            "ix_triage_outbox_pending",
            ["next_attempt_at", "id"],
            unique=False,
            postgresql_where=sa.text("delivered_at IS NULL AND dead_at IS NULL"),
            sqlite_where=sa.text("delivered_at IS NULL AND dead_at IS NULL"),
        )

    op.create_table(
        "triage_case_event",
        sa.Column("case_id", sa.String(length=36), nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", JSON_DOC, nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"],
            ["triage_case.id"],
            name=op.f("fk_triage_case_event_case_id_triage_case"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("case_id", "seq", name=op.f("pk_triage_case_event")),
    )
    op.create_table(
        "triage_observation",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("case_id", sa.String(length=36), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_by", sa.String(length=128), nullable=False),
        sa.Column("values", JSON_DOC, nullable=False),
        sa.Column("news2", JSON_DOC, nullable=True),
        sa.ForeignKeyConstraint(
            ["case_id"],
            ["triage_case.id"],
            name=op.f("fk_triage_observation_case_id_triage_case"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_triage_observation")),
    )
    with op.batch_alter_table("triage_observation", schema=None) as batch_op:
        batch_op.create_index("ix_triage_observation_case", ["case_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("triage_observation", schema=None) as batch_op:
        batch_op.drop_index("ix_triage_observation_case")

    op.drop_table("triage_observation")
    op.drop_table("triage_case_event")
    with op.batch_alter_table("triage_outbox", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_triage_outbox_pending",
            postgresql_where=sa.text("delivered_at IS NULL AND dead_at IS NULL"),
            sqlite_where=sa.text("delivered_at IS NULL AND dead_at IS NULL"),
        )
        batch_op.drop_index("ix_triage_outbox_event_id")

    op.drop_table("triage_outbox")
    op.drop_table("triage_inbox")
    with op.batch_alter_table("triage_case", schema=None) as batch_op:
        batch_op.drop_index("ix_triage_case_paramedic_created")
        batch_op.drop_index("ix_triage_case_created")

    op.drop_table("triage_case")
