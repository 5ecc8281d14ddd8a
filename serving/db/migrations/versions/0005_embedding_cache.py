"""embedding_cache: the embedding cache in the serving database, shared by replicas (#16).

Used when `serving.embedding_cache` is `database`; empty otherwise.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "embedding_cache" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "embedding_cache",
        sa.Column("key", sa.LargeBinary(length=32), primary_key=True),
        sa.Column("encoder_id", sa.String(length=255), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
    )
    op.create_index("ix_embedding_cache_encoder_id", "embedding_cache", ["encoder_id"])


def downgrade() -> None:
    op.drop_index("ix_embedding_cache_encoder_id", table_name="embedding_cache")
    op.drop_table("embedding_cache")
