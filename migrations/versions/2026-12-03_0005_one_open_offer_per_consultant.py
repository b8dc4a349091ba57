"""consult offers: at most one open offer per consultant, kept by the database

Routing has always asked a consultant about one case at a time, by locking their row and
looking for an open offer before making one. A unique index on the open offers' consultant
makes that a rule the database keeps, and lets routing make an offer in one statement
(an insert that does nothing if the consultant holds one already) instead of two.

Revision ID: 0005
Revises: 0004
Created: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_consult_offer_one_open_per_consultant"
OPEN = "state = 'open'"


def upgrade() -> None:
    # Routing never made two, but a database written by hand might hold them: say whose,
    # rather than fail on the index with a bare duplicate-key error.
    doubled = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT consultant_id FROM consult_offer WHERE state = 'open'"
                " GROUP BY consultant_id HAVING count(*) > 1 ORDER BY consultant_id"
            )
        )
        .scalars()
        .all()
    )
    if doubled:
        raise RuntimeError(
            "these consultants hold more than one open offer: "
            + ", ".join(doubled)
            + ". Close all but one of each (withdraw or decline them) and upgrade again."
        )
    with op.batch_alter_table("consult_offer", schema=None) as batch_op:
        batch_op.create_index(
            INDEX,
            ["consultant_id"],
            unique=True,
            postgresql_where=sa.text(OPEN),
            sqlite_where=sa.text(OPEN),
        )


def downgrade() -> None:
    with op.batch_alter_table("consult_offer", schema=None) as batch_op:
        batch_op.drop_index(INDEX)
