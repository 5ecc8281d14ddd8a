"""The embedding cache in the serving database, shared by every replica (`serving.embedding_cache:
database`); the default, `local`, keeps it in a SQLite file per machine (`learner.cache`).

Rows are what the local cache stores: a 32-byte key (sha256 of encoder id and masked text; no text is
stored), the encoder id, the dimension and the float32 vector's bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Engine, Integer, LargeBinary, String, create_engine, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, mapped_column

from learner.cache import VectorStore, decode_vector
from serving.settings import AppSettings
from serving.store import Base

CHUNK = 500  # keys per lookup query


class CachedEmbedding(Base):
    __tablename__ = "embedding_cache"

    key: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    encoder_id: Mapped[str] = mapped_column(String(255), index=True)
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class DatabaseVectorStore:
    """`learner.cache.VectorStore` over the `embedding_cache` table (PostgreSQL or SQLite)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        table = CachedEmbedding.__table__
        self._insert = (postgresql if engine.dialect.name == "postgresql" else sqlite).insert(table)

    def lookup(self, keys: Sequence[bytes], dim: int) -> dict[bytes, NDArray[np.float32]]:
        found: dict[bytes, NDArray[np.float32]] = {}
        with self.engine.connect() as connection:
            for start in range(0, len(keys), CHUNK):
                query = select(CachedEmbedding.key, CachedEmbedding.dim, CachedEmbedding.vector).where(
                    CachedEmbedding.key.in_(list(keys[start : start + CHUNK]))
                )
                for key, row_dim, blob in connection.execute(query):
                    vector = decode_vector(bytes(blob), dim) if row_dim == dim else None
                    if vector is not None:
                        found[bytes(key)] = vector
        return found

    def store(self, rows: Sequence[tuple[bytes, str, int, bytes]]) -> None:
        if not rows:
            return
        values = [{"key": k, "encoder_id": e, "dim": d, "vector": v} for k, e, d, v in rows]
        # Two replicas may encode the same new text at once: the same row, so the second write wins.
        statement = self._insert.on_conflict_do_update(
            index_elements=["key"],
            set_={"encoder_id": self._insert.excluded.encoder_id, "dim": self._insert.excluded.dim,
                  "vector": self._insert.excluded.vector},
        )  # fmt: skip
        with self.engine.begin() as connection:
            connection.execute(statement, values)

    def count(self, encoder_id: str) -> int:
        with self.engine.connect() as connection:
            query = (
                select(func.count())
                .select_from(CachedEmbedding)
                .where(CachedEmbedding.encoder_id == encoder_id)
            )
            return int(connection.scalar(query) or 0)

    def contains(self, key: bytes) -> bool:
        with self.engine.connect() as connection:
            return (
                connection.scalar(select(CachedEmbedding.key).where(CachedEmbedding.key == key)) is not None
            )

    def close(self) -> None:
        self.engine.dispose()


def vector_store_for(settings: AppSettings) -> VectorStore | None:
    """The shared store when `serving.embedding_cache` is `database`, else None (the local file)."""
    if settings.serving.embedding_cache != "database":
        return None
    return DatabaseVectorStore(create_engine(settings.database_url, pool_pre_ping=True))
