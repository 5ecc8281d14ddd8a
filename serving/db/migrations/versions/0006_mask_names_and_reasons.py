"""Mask personal data in key names and retrain reasons stored before they were masked on the way in.

API key names name the actor of every prediction (`predictions.requested_by`), retrain and promotion
(MLflow tags, logs); retrain reasons quote them. Rows written before those were masked at the boundary
get `learner.pii.mask_pii` applied now (idempotent: masked rows are left as they are), cut to their
column's length. The audit trail is append-only (its triggers refuse updates) and keeps what it
recorded then.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from learner.pii import mask_pii

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

KEY_NAME_LENGTH = 100
REQUESTED_BY_LENGTH = 255


def _masked(value: Any, length: int) -> Any:
    return mask_pii(value)[:length] if isinstance(value, str) else value


def upgrade() -> None:
    bind = op.get_bind()
    tables = set(sa.inspect(bind).get_table_names())
    meta = sa.MetaData()
    if "api_keys" in tables:
        keys = sa.Table("api_keys", meta, autoload_with=bind)
        for key_id, name in bind.execute(sa.select(keys.c.id, keys.c.name)).all():
            if _masked(name, KEY_NAME_LENGTH) != name:
                bind.execute(
                    keys.update().where(keys.c.id == key_id).values(name=_masked(name, KEY_NAME_LENGTH))
                )
    if "predictions" in tables:
        predictions = sa.Table("predictions", meta, autoload_with=bind)
        actors = bind.execute(sa.select(predictions.c.requested_by).distinct()).scalars().all()
        for actor in actors:
            if _masked(actor, REQUESTED_BY_LENGTH) != actor:
                bind.execute(
                    predictions.update()
                    .where(predictions.c.requested_by == actor)
                    .values(requested_by=_masked(actor, REQUESTED_BY_LENGTH))
                )
    if "retrain_runs" in tables:
        runs = sa.Table("retrain_runs", meta, autoload_with=bind)
        for run_id, reasons in bind.execute(sa.select(runs.c.id, runs.c.reasons)).all():
            if not isinstance(reasons, list):
                continue
            masked = [mask_pii(r) if isinstance(r, str) else r for r in reasons]
            if masked != reasons:
                bind.execute(runs.update().where(runs.c.id == run_id).values(reasons=masked))


def downgrade() -> None:
    """Masking cannot be undone: nothing to do."""
