"""Alembic's environment: always run on the connection `serving.db.upgrade` hands over."""

from __future__ import annotations

from alembic import context

from serving.db import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through serving.db.upgrade (hitl db upgrade), not the alembic CLI")
context.configure(connection=connection, target_metadata=metadata(), render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
