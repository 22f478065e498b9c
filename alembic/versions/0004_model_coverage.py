"""model coverage: who a shared (conditioned) model can imitate, and how well

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_coverage",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(length=64), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("chars", sa.Integer(), nullable=False),
        sa.Column("val_chars", sa.Integer(), nullable=False),
        sa.Column("val_loss", sa.Float(), nullable=True),
        sa.Column("val_loss_anyone", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["version_id"], ["model_versions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("version_id", "target"),
    )
    with op.batch_alter_table("model_coverage") as batch_op:
        batch_op.create_index("ix_model_coverage_target", ["target"])


def downgrade() -> None:
    with op.batch_alter_table("model_coverage") as batch_op:
        batch_op.drop_index("ix_model_coverage_target")
    op.drop_table("model_coverage")
