"""The embedding cache in the serving database (`serving.embeddings`): what one replica encoded, another
reads without encoding; writing the same row twice is fine. On SQLite here, on PostgreSQL in
tests/integration/test_replicas_postgres.py."""

from __future__ import annotations

from pathlib import Path

from hitl.settings import ServingSettings, Settings
from serving.embeddings import DatabaseVectorStore, vector_store_for
from tests.unit.serving.db_checks import check_replicas_share_one_cache


def test_replicas_share_one_cache_on_sqlite(tmp_path: Path) -> None:
    check_replicas_share_one_cache(f"sqlite:///{tmp_path / 'hitl.db'}", tmp_path)


def test_the_default_keeps_the_cache_local(tmp_path: Path) -> None:
    assert vector_store_for(Settings(state_dir=tmp_path)) is None
    shared = vector_store_for(
        Settings(state_dir=tmp_path, serving=ServingSettings(embedding_cache="database"))
    )
    assert isinstance(shared, DatabaseVectorStore)
    shared.close()
