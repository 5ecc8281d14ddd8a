"""pushed_tasks.closed_at / close_reason: a task that left Label Studio's queue, and why (#14).

One task per item across model versions: a newer champion that auto-accepts an item deletes its open
task, and the ledger records when and why, so the item can get a fresh task if it is escalated again.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("pushed_tasks")}
    if "closed_at" not in columns:
        op.add_column("pushed_tasks", sa.Column("closed_at", sa.DateTime(), nullable=True))
    if "close_reason" not in columns:
        op.add_column("pushed_tasks", sa.Column("close_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pushed_tasks") as batch:
        batch.drop_column("close_reason")
        batch.drop_column("closed_at")
