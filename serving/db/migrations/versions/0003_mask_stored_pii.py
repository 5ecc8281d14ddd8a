"""Mask personal data already stored (#12): rows written before texts were masked at the boundary.

Items, seed labels and pending outbox payloads get `learner.pii.mask_pii` applied to their free
text (idempotent, so masked rows are left as they are). Tasks Label Studio already holds are outside
this database: `hitl labelstudio sync` does not rewrite them.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from learner.pii import mask_pii

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TEXT_COLUMNS = {
    "items": ("id", ("title", "description", "brand", "category_hint")),
    "retrain_seed_labels": ("item_id", ("title", "description", "brand")),
}
PAYLOAD_KEYS = ("title", "description", "brand")


def _mask(value: Any) -> Any:
    return mask_pii(value) if isinstance(value, str) else value


def upgrade() -> None:
    bind = op.get_bind()
    tables = set(sa.inspect(bind).get_table_names())
    meta = sa.MetaData()
    for name, (key, columns) in TEXT_COLUMNS.items():
        if name not in tables:
            continue
        table = sa.Table(name, meta, autoload_with=bind)
        for row in bind.execute(sa.select(table.c[key], *(table.c[c] for c in columns))).all():
            changed = {c: _mask(v) for c, v in zip(columns, row[1:], strict=True) if _mask(v) != v}
            if changed:
                bind.execute(table.update().where(table.c[key] == row[0]).values(**changed))
    if "outbox" in tables:
        outbox = sa.Table("outbox", meta, autoload_with=bind)
        for entry_id, payload in bind.execute(sa.select(outbox.c.id, outbox.c.payload)).all():
            if not isinstance(payload, dict):
                continue
            masked = {k: _mask(v) if k in PAYLOAD_KEYS else v for k, v in payload.items()}
            if masked != payload:
                bind.execute(outbox.update().where(outbox.c.id == entry_id).values(payload=masked))


def downgrade() -> None:
    """Masking cannot be undone: nothing to do."""
