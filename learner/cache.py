"""Embedding cache: each distinct (encoder, masked text) pair is encoded once, ever.

Keys are sha256(encoder_id + NUL + masked text); the text itself is never stored, and it is masked
before hashing, so neither the key nor the row derives from raw personal data. A bounded in-memory LRU
of recent vectors sits in front of the store, so a server's hot items skip it entirely.

Where the vectors persist is a `VectorStore`: by default `SqliteVectorStore`, a file in the cache
directory (one machine); `serving` can give a table of its database instead, shared by every replica.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from learner.encoder import TextEncoder, encoder_from
from learner.exceptions import LearnerError
from learner.pii import mask_pii
from learner.settings import LearnerSettings

DB_NAME = "embeddings.sqlite3"
# SQLite's default host-parameter limit is 32766 on current builds but 999 on old ones.
_SQL_CHUNK = 900
_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    key BLOB PRIMARY KEY,
    encoder_id TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS embeddings_encoder ON embeddings (encoder_id);
"""
_FLOAT = np.dtype("<f4")  # fixed byte order: the file may move between machines
# 384-d float32 vectors: 20,000 of them are ~31 MB, enough for a serving process's working set.
DEFAULT_MEMORY_ITEMS = 20_000


def cache_key(encoder_id: str, masked_text: str) -> bytes:
    """32-byte key of one already-masked text under one encoder."""
    return hashlib.sha256(f"{encoder_id}\x00{masked_text}".encode("utf-8", "surrogatepass")).digest()


def encode_vector(vector: NDArray[np.float32]) -> bytes:
    return np.ascontiguousarray(vector, dtype=_FLOAT).tobytes()


def decode_vector(blob: bytes, dim: int) -> NDArray[np.float32] | None:
    """The vector in `blob`; None for a torn or foreign row (then re-encoded and overwritten)."""
    if len(blob) != dim * _FLOAT.itemsize:
        return None
    return np.frombuffer(blob, dtype=_FLOAT).astype(np.float32)


class VectorStore(Protocol):
    """Where an `EmbeddingCache` keeps its vectors: rows (key, encoder_id, dim, vector bytes)."""

    def lookup(self, keys: Sequence[bytes], dim: int) -> dict[bytes, NDArray[np.float32]]: ...

    def store(self, rows: Sequence[tuple[bytes, str, int, bytes]]) -> None: ...

    def count(self, encoder_id: str) -> int: ...

    def contains(self, key: bytes) -> bool: ...

    def close(self) -> None: ...


class SqliteVectorStore:
    """``directory/embeddings.sqlite3`` (WAL mode, safe across processes of one machine). One connection
    shared by threads; callers serialise its use."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(directory / DB_NAME, timeout=30.0, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)

    def lookup(self, keys: Sequence[bytes], dim: int) -> dict[bytes, NDArray[np.float32]]:
        found: dict[bytes, NDArray[np.float32]] = {}
        for start in range(0, len(keys), _SQL_CHUNK):
            chunk = list(keys[start : start + _SQL_CHUNK])
            marks = ",".join("?" * len(chunk))
            rows = self._conn.execute(
                f"SELECT key, dim, vector FROM embeddings WHERE key IN ({marks})", chunk
            ).fetchall()
            for key, row_dim, blob in rows:
                vector = decode_vector(bytes(blob), dim) if row_dim == dim else None
                if vector is not None:
                    found[bytes(key)] = vector
        return found

    def store(self, rows: Sequence[tuple[bytes, str, int, bytes]]) -> None:
        with self._conn:
            self._conn.executemany(
                "INSERT OR REPLACE INTO embeddings (key, encoder_id, dim, vector) VALUES (?, ?, ?, ?)", rows
            )

    def count(self, encoder_id: str) -> int:
        (n,) = self._conn.execute(
            "SELECT COUNT(*) FROM embeddings WHERE encoder_id = ?", (encoder_id,)
        ).fetchone()
        return int(n)

    def contains(self, key: bytes) -> bool:
        return self._conn.execute("SELECT 1 FROM embeddings WHERE key = ?", (key,)).fetchone() is not None

    def close(self) -> None:
        self._conn.close()


class EmbeddingCache:
    """Embeddings persisted in ``directory/embeddings.sqlite3`` (WAL mode, safe across processes).

    Parameters
    ----------
    directory : Path
        Created if missing. Several encoders may share one directory; rows are keyed per encoder.
    encoder : TextEncoder
        Called only for texts not in the cache, once per `embed` call, with deduplicated masked texts.
        It runs outside the cache's lock, so lookups of cached texts by other threads never wait for
        an encoding batch; two threads missing the same text at once may both encode it (same row).
    memory_items : int
        How many recent vectors to keep in memory as well (0 = none).

    Attributes
    ----------
    hits, misses : int
        Distinct texts per `embed` call served from disk / sent to the encoder, summed over calls.
    """

    def __init__(
        self,
        directory: Path,
        encoder: TextEncoder,
        *,
        memory_items: int = DEFAULT_MEMORY_ITEMS,
        vectors: VectorStore | None = None,
    ) -> None:
        if memory_items < 0:
            raise ValueError(f"memory_items must be >= 0, got {memory_items}")
        self.directory = Path(directory)
        self.encoder = encoder
        self.encoder_id = encoder.encoder_id
        self.dim = encoder.dim
        self.hits = 0
        self.misses = 0
        self.memory_items = memory_items
        self._memory: OrderedDict[bytes, NDArray[np.float32]] = OrderedDict()
        self._lock = threading.Lock()
        # Shared by threads (FastAPI workers); the lock serialises its use.
        self._vectors: VectorStore = vectors if vectors is not None else SqliteVectorStore(self.directory)

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Embeddings for `texts`, encoding only those never seen before.

        Parameters
        ----------
        texts : (n,) sequence of str

        Returns
        -------
        (n, dim) float32, rows in input order
        """
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not a single str")
        masked = [mask_pii(t) for t in texts]
        keys = [cache_key(self.encoder_id, m) for m in masked]
        out = np.empty((len(keys), self.dim), dtype=np.float32)
        if not keys:
            return out
        unique: dict[bytes, str] = dict(zip(keys, masked, strict=True))
        with self._lock:
            found = self._recall(list(unique))
            on_disk = [k for k in unique if k not in found]
            if on_disk:
                loaded = self._lookup(on_disk)
                self._remember(loaded)
                found.update(loaded)
        missing = [k for k in unique if k not in found]
        if missing:
            vectors = np.asarray(self.encoder.encode([unique[k] for k in missing]), dtype=np.float32)
            if vectors.shape != (len(missing), self.dim):
                raise LearnerError(
                    f"encoder {self.encoder_id!r} returned shape {vectors.shape} for "
                    f"{len(missing)} texts; expected ({len(missing)}, {self.dim})"
                )
            encoded = {k: v.copy() for k, v in zip(missing, vectors, strict=True)}
            with self._lock:
                self._store(missing, vectors)
                self._remember(encoded)
            found.update(encoded)
        with self._lock:
            self.hits += len(unique) - len(missing)
            self.misses += len(missing)
        out[:] = np.stack([found[key] for key in keys])  # a copy: callers never see cached arrays
        return out

    def in_memory(self, texts: Sequence[str]) -> bool:
        """True when every text's vector is in the in-memory LRU: `embed` will then neither touch the
        file nor the encoder (a caller may run it inline instead of on a worker thread)."""
        keys = [cache_key(self.encoder_id, mask_pii(t)) for t in texts]
        with self._lock:
            return all(key in self._memory for key in keys)

    def _recall(self, keys: list[bytes]) -> dict[bytes, NDArray[np.float32]]:
        """The in-memory vectors among `keys`, marked most recently used (lock held)."""
        found: dict[bytes, NDArray[np.float32]] = {}
        for key in keys:
            vector = self._memory.get(key)
            if vector is not None:
                self._memory.move_to_end(key)
                found[key] = vector
        return found

    def _remember(self, vectors: dict[bytes, NDArray[np.float32]]) -> None:
        """Keep `vectors` in memory, dropping the least recently used beyond the bound (lock held)."""
        if self.memory_items == 0:
            return
        for key, vector in vectors.items():
            self._memory[key] = vector
            self._memory.move_to_end(key)
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)

    def _lookup(self, keys: list[bytes]) -> dict[bytes, NDArray[np.float32]]:
        return self._vectors.lookup(keys, self.dim)

    def _store(self, keys: list[bytes], vectors: NDArray[np.float32]) -> None:
        rows = [
            (key, self.encoder_id, self.dim, encode_vector(vec))
            for key, vec in zip(keys, vectors, strict=True)
        ]
        self._vectors.store(rows)

    def __len__(self) -> int:
        """Number of cached embeddings for this cache's encoder."""
        with self._lock:
            return self._vectors.count(self.encoder_id)

    def __contains__(self, text: object) -> bool:
        if not isinstance(text, str):
            return False
        key = cache_key(self.encoder_id, mask_pii(text))
        with self._lock:
            return self._vectors.contains(key)

    def close(self) -> None:
        with self._lock:
            self._memory.clear()
            self._vectors.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.directory)!r}, encoder_id={self.encoder_id!r})"


# Texts embedded per call by `embed_in_chunks`: each chunk is on disk before the next is encoded.
RESUMABLE_CHUNK = 2000


def embed_in_chunks(
    cache: EmbeddingCache, texts: Sequence[str], chunk: int = RESUMABLE_CHUNK
) -> NDArray[np.float32]:
    """`cache.embed(texts)` a chunk at a time, so a long embedding (a whole catalog: minutes on a CPU)
    that is interrupted keeps what it did, and a re-run encodes only the rest."""
    parts = [cache.embed(texts[start : start + chunk]) for start in range(0, len(texts), chunk)]
    return np.concatenate(parts).astype(np.float32) if parts else np.empty((0, cache.dim), np.float32)


def cached_encoder(
    settings: LearnerSettings,
    cache_dir: Path,
    *,
    encoder: TextEncoder | None = None,
    progress: bool = False,
    vectors: VectorStore | None = None,
) -> EmbeddingCache:
    """The configured encoder (or `encoder`) behind the cache in `cache_dir` (the state dir's
    `cache_dir`), or in `vectors`: every process that embeds reads and warms the same cache."""
    return EmbeddingCache(cache_dir, encoder or encoder_from(settings, progress=progress), vectors=vectors)
