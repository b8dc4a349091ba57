"""consult_router: rota, presence, offers, consults, timers, outbox and inbox

Revision ID: 0002
Revises: 0001
Created: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# JSON documents: JSONB on PostgreSQL, JSON text on SQLite.
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "consult_case",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("reference", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("specialty", sa.String(length=32), nullable=False),
        sa.Column("call_category", sa.String(length=4), nullable=False),
        sa.Column("news2_score", sa.Integer(), nullable=True),
        sa.Column("snapshot", JSON_DOC, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("broadcast", sa.Boolean(), nullable=False),
        sa.Column("offer_round", sa.Integer(), nullable=False),
        sa.Column("escalate_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("escalations", sa.Integer(), nullable=False),
        sa.Column("router_version", sa.Integer(), nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consult_case")),
    )
    with op.batch_alter_table("consult_case", schema=None) as batch_op:
        batch_op.create_index("ix_consult_case_escalate_at", ["escalate_at"], unique=False)
        batch_op.create_index(
            "ix_consult_case_open",
            ["status", "priority", "created_at"],
            unique=False,
            postgresql_where=sa.text("status IN ('queued', 'offered')"),
            sqlite_where=sa.text("status IN ('queued', 'offered')"),
        )

    op.create_table(
        "consult_consultant",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("grade", sa.String(length=64), nullable=False),
        sa.Column("specialties", JSON_DOC, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_assigned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("message_seq", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consult_consultant")),
    )
    op.create_table(
        "consult_inbox",
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_consult_inbox")),
    )
    op.create_table(
        "consult_message",
        sa.Column("consultant_id", sa.String(length=128), nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("payload", JSON_DOC, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("consultant_id", "seq", name=op.f("pk_consult_message")),
    )
    with op.batch_alter_table("consult_message", schema=None) as batch_op:
        batch_op.create_index("ix_consult_message_created", ["created_at"], unique=False)

    op.create_table(
        "consult_outbox",
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
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consult_outbox")),
    )
    with op.batch_alter_table("consult_outbox", schema=None) as batch_op:
        batch_op.create_index("ix_consult_outbox_event_id", ["event_id"], unique=False)
        batch_op.create_index(
            "ix_consult_outbox_pending",
            ["next_attempt_at", "id"],
            unique=False,
            postgresql_where=sa.text("delivered_at IS NULL AND dead_at IS NULL"),
            sqlite_where=sa.text("delivered_at IS NULL AND dead_at IS NULL"),
        )

    op.create_table(
        "consult_connection",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("consultant_id", sa.String(length=128), nullable=False),
        sa.Column("replica_id", sa.String(length=64), nullable=False),
        sa.Column("connected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["consultant_id"],
            ["consult_consultant.id"],
            name=op.f("fk_consult_connection_consultant_id_consult_consultant"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consult_connection")),
    )
    with op.batch_alter_table("consult_connection", schema=None) as batch_op:
        batch_op.create_index("ix_consult_connection_consultant", ["consultant_id"], unique=False)

    op.create_table(
        "consult_consult",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("case_id", sa.String(length=36), nullable=False),
        sa.Column("consultant_id", sa.String(length=128), nullable=False),
        sa.Column("via", sa.String(length=8), nullable=False),
        sa.Column("offer_id", sa.String(length=36), nullable=True),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("advice_due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("advised_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disposition", sa.String(length=16), nullable=True),
        sa.Column("pathway", sa.String(length=32), nullable=True),
        sa.Column("advice", sa.Text(), nullable=True),
        sa.Column("safety_netting", sa.Text(), nullable=True),
        sa.Column("risk_override", sa.Boolean(), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["case_id"],
            ["consult_case.id"],
            name=op.f("fk_consult_consult_case_id_consult_case"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["consultant_id"],
            ["consult_consultant.id"],
            name=op.f("fk_consult_consult_consultant_id_consult_consultant"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consult_consult")),
        sa.UniqueConstraint("case_id", name=op.f("uq_consult_consult_case_id")),
    )
    with op.batch_alter_table("consult_consult", schema=None) as batch_op:
        batch_op.create_index("ix_consult_consult_advice_due", ["advice_due_at"], unique=False)
        batch_op.create_index(
            "ix_consult_consult_consultant", ["consultant_id", "advised_at"], unique=False
        )

    op.create_table(
        "consult_offer",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("case_id", sa.String(length=36), nullable=False),
        sa.Column("consultant_id", sa.String(length=128), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("broadcast", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("close_reason", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["case_id"],
            ["consult_case.id"],
            name=op.f("fk_consult_offer_case_id_consult_case"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["consultant_id"],
            ["consult_consultant.id"],
            name=op.f("fk_consult_offer_consultant_id_consult_consultant"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consult_offer")),
    )
    with op.batch_alter_table("consult_offer", schema=None) as batch_op:
        batch_op.create_index("ix_consult_offer_case", ["case_id", "state"], unique=False)
        batch_op.create_index(
            "ix_consult_offer_consultant", ["consultant_id", "state"], unique=False
        )
        batch_op.create_index(
            "ix_consult_offer_open",
            ["expires_at"],
            unique=False,
            postgresql_where=sa.text("state = 'open'"),
            sqlite_where=sa.text("state = 'open'"),
        )

    op.create_table(
        "consult_shift",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("consultant_id", sa.String(length=128), nullable=False),
        sa.Column("specialty", sa.String(length=32), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["consultant_id"],
            ["consult_consultant.id"],
            name=op.f("fk_consult_shift_consultant_id_consult_consultant"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consult_shift")),
    )
    with op.batch_alter_table("consult_shift", schema=None) as batch_op:
        batch_op.create_index(
            "ix_consult_shift_consultant", ["consultant_id", "starts_at"], unique=False
        )
        batch_op.create_index(
            "ix_consult_shift_specialty_time", ["specialty", "starts_at", "ends_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("consult_shift", schema=None) as batch_op:
        batch_op.drop_index("ix_consult_shift_specialty_time")
        batch_op.drop_index("ix_consult_shift_consultant")

    op.drop_table("consult_shift")
    with op.batch_alter_table("consult_offer", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_consult_offer_open",
            postgresql_where=sa.text("state = 'open'"),
            sqlite_where=sa.text("state = 'open'"),
        )
        batch_op.drop_index("ix_consult_offer_consultant")
        batch_op.drop_index("ix_consult_offer_case")

    op.drop_table("consult_offer")
    with op.batch_alter_table("consult_consult", schema=None) as batch_op:
        batch_op.drop_index("ix_consult_consult_consultant")
        batch_op.drop_index("ix_consult_consult_advice_due")

    op.drop_table("consult_consult")
    with op.batch_alter_table("consult_connection", schema=None) as batch_op:
        batch_op.drop_index("ix_consult_connection_consultant")

    op.drop_table("consult_connection")
    with op.batch_alter_table("consult_outbox", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_consult_outbox_pending",
            postgresql_where=sa.text("delivered_at IS NULL AND dead_at IS NULL"),
            sqlite_where=sa.text("delivered_at IS NULL AND dead_at IS NULL"),
        )
        batch_op.drop_index("ix_consult_outbox_event_id")

    op.drop_table("consult_outbox")
    with op.batch_alter_table("consult_message", schema=None) as batch_op:
        batch_op.drop_index("ix_consult_message_created")

    op.drop_table("consult_message")
    op.drop_table("consult_inbox")
    op.drop_table("consult_consultant")
    with op.batch_alter_table("consult_case", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_consult_case_open",
            postgresql_where=sa.text("status IN ('queued', 'offered')"),
            sqlite_where=sa.text("status IN ('queued', 'offered')"),
        )
        batch_op.drop_index("ix_consult_case_escalate_at")

    op.drop_table("consult_case")
