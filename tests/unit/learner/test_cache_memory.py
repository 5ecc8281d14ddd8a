"""The embedding cache's in-memory LRU, and encoding outside its lock."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from learner.cache import DB_NAME, EmbeddingCache
from tests.unit.learner.support import CountingEncoder


class BlockingEncoder(CountingEncoder):
    """Holds every `encode` call until released, to look at the cache while it encodes."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        self.entered.set()
        assert self.release.wait(10)
        return super().encode(texts)


def test_memory_hits_skip_the_file(tmp_path: Path) -> None:
    encoder = CountingEncoder()
    with EmbeddingCache(tmp_path, encoder) as cache:
        first = cache.embed(["tea", "coffee"])
        assert cache.in_memory(["coffee", "tea"])
        with sqlite3.connect(tmp_path / DB_NAME) as conn:  # the file no longer has the rows ...
            conn.execute("DELETE FROM embeddings")
        np.testing.assert_array_equal(cache.embed(["tea", "coffee"]), first)  # ... memory still does
        assert encoder.calls == [["tea", "coffee"]]
        assert (cache.hits, cache.misses) == (2, 2)


def test_returned_rows_are_copies(tmp_path: Path) -> None:
    with EmbeddingCache(tmp_path, CountingEncoder()) as cache:
        out = cache.embed(["tea"])
        out[:] = 0
        assert np.any(cache.embed(["tea"]) != 0)


def test_the_lru_is_bounded_and_evicts_the_least_recent(tmp_path: Path) -> None:
    encoder = CountingEncoder()
    with EmbeddingCache(tmp_path, encoder, memory_items=2) as cache:
        cache.embed(["a", "b"])
        cache.embed(["a"])  # a is now the most recent
        cache.embed(["c"])  # evicts b
        assert cache.in_memory(["a", "c"])
        assert not cache.in_memory(["b"])
        cache.embed(["b"])  # from the file, not the encoder
        assert encoder.calls == [["a", "b"], ["c"]]
        assert cache.in_memory(["b"])


def test_disk_hits_are_remembered(tmp_path: Path) -> None:
    with EmbeddingCache(tmp_path, CountingEncoder()) as cache:
        cache.embed(["tea"])
    with EmbeddingCache(tmp_path, CountingEncoder()) as reopened:
        assert not reopened.in_memory(["tea"])
        reopened.embed(["tea"])
        assert reopened.in_memory(["tea"])


def test_memory_can_be_turned_off(tmp_path: Path) -> None:
    with EmbeddingCache(tmp_path, CountingEncoder(), memory_items=0) as cache:
        cache.embed(["tea"])
        assert not cache.in_memory(["tea"])
    with pytest.raises(ValueError, match="memory_items"):
        EmbeddingCache(tmp_path, CountingEncoder(), memory_items=-1)


def test_cached_lookups_do_not_wait_for_an_encoding_batch(tmp_path: Path) -> None:
    encoder = BlockingEncoder()
    cache = EmbeddingCache(tmp_path, encoder)
    encoder.release.set()
    cache.embed(["cached"])
    encoder.release.clear()
    encoder.entered.clear()
    slow = threading.Thread(target=cache.embed, args=(["new text"],))
    slow.start()
    assert encoder.entered.wait(10)
    done = threading.Event()

    def lookup() -> None:
        cache.embed(["cached"])
        len(cache)  # the file is usable too
        done.set()

    threading.Thread(target=lookup).start()
    assert done.wait(5), "a cached lookup waited for another thread's encoder call"
    encoder.release.set()
    slow.join(10)
    assert cache.in_memory(["new text"])
    assert "new text" in cache
    cache.close()
