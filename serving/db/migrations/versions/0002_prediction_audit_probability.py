"""predictions.audit_probability: the inclusion probability of the audit draw at routing (#11).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database upgraded by the additive column check of earlier releases may already have it.
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("predictions")}
    if "audit_probability" not in columns:
        op.add_column("predictions", sa.Column("audit_probability", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("audit_probability")
