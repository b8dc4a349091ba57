"""audit: the hash-chained trail, dispositions, checkpoints and inbox

Revision ID: 0003
Revises: 0002
Created: 2026-11-24
"""

from collections.abc import Sequence

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
