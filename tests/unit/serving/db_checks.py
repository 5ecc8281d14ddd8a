"""Database checks that run on SQLite (unit tests) and on PostgreSQL (tests/integration): a database at
the initial revision, full of rows, upgrades to head and keeps every row; replicas share one embedding
cache in the database."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    Integer,
    MetaData,
    create_engine,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection

from learner.cache import EmbeddingCache, encode_vector
from serving import db
from serving.embeddings import DatabaseVectorStore
from serving.store import Store
from tests.unit.learner.support import CountingEncoder

ROWS = 3


def _value(column: Any, row: int) -> Any:
    for key in column.foreign_keys:  # the value row `row` of the referenced table holds
        return _value(key.column, row)
    kind = column.type
    if isinstance(kind, Boolean):
        return row % 2 == 0
    if isinstance(kind, Integer):
        return row
    if isinstance(kind, Float):
        return row / 10
    if isinstance(kind, DateTime):
        return datetime(2026, 1, 1, 12, row)
    if isinstance(kind, JSON):
        return {"row": row}
    return f"{column.name}-{row}"


def fill_every_table(connection: Connection) -> dict[str, int]:
    """ROWS rows in every table as it is at the connection's revision (reflected, so this works at
    any revision); ids 1..ROWS, so foreign keys point at rows that exist."""
    reflected = MetaData()
    reflected.reflect(connection)
    for table in reflected.sorted_tables:
        if table.name == "alembic_version":
            continue
        connection.execute(
            table.insert(), [{c.name: _value(c, row) for c in table.columns} for row in range(1, ROWS + 1)]
        )
    return {
        t: connection.scalar(select(func.count()).select_from(reflected.tables[t])) or 0
        for t in reflected.tables
    }


def check_initial_to_head_keeps_every_row(url: str) -> None:
    """A database at the initial revision, full of rows, upgraded to head by the app's own path."""
    engine = create_engine(url)
    with engine.begin() as connection:
        command.upgrade(db._config(connection), db.INITIAL_REVISION)
        before = fill_every_table(connection)
    assert db.current_revision(engine) == db.INITIAL_REVISION
    assert "audit_probability" not in {c["name"] for c in inspect(engine).get_columns("predictions")}
    store = Store(url)
    store.create_all()
    assert db.current_revision(store.engine) == db.head_revision()
    with store.engine.connect() as connection:
        after = {t: connection.scalar(text(f'SELECT COUNT(*) FROM "{t}"')) for t in before}
        assert after == before
        assert (
            connection.scalar(text("SELECT COUNT(*) FROM predictions WHERE audit_probability IS NULL"))
            == ROWS
        )
    with store.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), db.metadata()) == []
    store.close()
    engine.dispose()


def check_replicas_share_one_cache(url: str, tmp_path: Path) -> None:
    store = Store(url)
    store.create_all()
    texts = ["Trail running shoe", "Cast iron skillet", "Trail running shoe"]
    first_encoder, second_encoder = CountingEncoder(), CountingEncoder()
    first = EmbeddingCache(
        tmp_path / "a", first_encoder, vectors=DatabaseVectorStore(store.engine), memory_items=0
    )
    second = EmbeddingCache(
        tmp_path / "b", second_encoder, vectors=DatabaseVectorStore(store.engine), memory_items=0
    )

    a = first.embed(texts)
    b = second.embed(texts)

    assert first_encoder.calls == [["Trail running shoe", "Cast iron skillet"]]
    assert second_encoder.calls == [], "the second replica read what the first encoded"
    np.testing.assert_array_equal(a, b)
    assert len(second) == 2
    assert "Cast iron skillet" in second
    vectors, key = DatabaseVectorStore(store.engine), b"k" * 32
    vectors.store([(key, "e@1", 4, encode_vector(np.ones(4, np.float32)))])
    vectors.store([(key, "e@1", 4, encode_vector(np.zeros(4, np.float32)))])  # the same row: last wins
    np.testing.assert_array_equal(vectors.lookup([key], 4)[key], np.zeros(4, np.float32))
    vectors.close()
    first.close()
    second.close()
    store.close()
