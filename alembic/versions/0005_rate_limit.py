"""requests counted for the rate limit, shared by every replica on one PostgreSQL

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rate_limit_hits",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("rate_limit_hits") as batch_op:
        batch_op.create_index("ix_rate_limit_hits_user_at", ["user_id", "at"])


def downgrade() -> None:
    with op.batch_alter_table("rate_limit_hits") as batch_op:
        batch_op.drop_index("ix_rate_limit_hits_user_at")
    op.drop_table("rate_limit_hits")
