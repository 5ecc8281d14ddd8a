"""Every table of the serving database, registered in one place, and its schema migrations (Alembic).

`TABLE_MODULES` lists the modules that define tables on `serving.store.Base`; `metadata()` imports
them all, so no table depends on which module happened to be imported first. `upgrade(engine)` brings
any database to the head revision and keeps its rows:

- an empty database gets today's tables at once and is stamped at head (what running every migration
  from nothing would produce; `tests/unit/serving/test_db.py` checks the two agree);
- a database made before migrations existed (tables, no ``alembic_version``) gets the tables it
  lacks, is stamped at the initial revision (the schema of those releases) and is migrated from there;
- any other database is migrated from its recorded revision.

`hitl db upgrade` runs it, and so does the app at start and `make up`.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, MetaData, inspect

logger = logging.getLogger(__name__)

TABLE_MODULES = (
    "serving.store",
    "serving.keys",
    "serving.outbox",
    "serving.sessions",
    "serving.retrain.tables",
    "serving.embeddings",
)
INITIAL_REVISION = "0001"
MIGRATIONS = Path(__file__).with_name("migrations")


def metadata() -> MetaData:
    """`serving.store.Base.metadata` with every table of `TABLE_MODULES` on it."""
    for module in TABLE_MODULES:
        importlib.import_module(module)
    from serving.store import Base

    return Base.metadata


def _config(connection: object | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:  # pragma: no cover - the package ships its migrations
        raise RuntimeError(f"no migrations under {MIGRATIONS}")
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> str:
    """Bring the database behind `engine` to the head revision (module docstring); returns it."""
    tables = metadata()
    with engine.begin() as connection:
        recorded = MigrationContext.configure(connection).get_current_revision()
        present = set(inspect(connection).get_table_names())
        config = _config(connection)
        head = head_revision()
        if recorded is None and not present & set(tables.tables):
            tables.create_all(connection)
            command.stamp(config, "head")
            logger.info("new database: created at revision %s", head)
            return head
        if recorded is None:
            tables.create_all(connection)  # only the tables it lacks; existing ones are left alone
            command.stamp(config, INITIAL_REVISION)
            logger.info("database made before migrations: stamped %s", INITIAL_REVISION)
        command.upgrade(config, "head")
    return head


__all__ = ["INITIAL_REVISION", "TABLE_MODULES", "current_revision", "head_revision", "metadata", "upgrade"]
