from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from learner.cache import DB_NAME, EmbeddingCache, cache_key, embed_in_chunks
from learner.encoder import HFEncoder, TextEncoder
from learner.exceptions import LearnerError
from tests.unit.learner.support import CountingEncoder


class FailingAfter(CountingEncoder):
    """Encodes `calls` times, then dies as an interrupted process would."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.calls_left = calls

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        if self.calls_left <= 0:
            raise RuntimeError("interrupted")
        self.calls_left -= 1
        return super().encode(texts)


class WrongShapeEncoder(CountingEncoder):
    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return np.zeros((len(texts), self.dim + 1), dtype=np.float32)


def test_fake_satisfies_the_protocol() -> None:
    assert isinstance(CountingEncoder(), TextEncoder)


def test_misses_are_deduplicated_and_encoded_in_one_call(tmp_path: Path) -> None:
    encoder = CountingEncoder()
    cache = EmbeddingCache(tmp_path, encoder)
    texts = ["tea", "coffee", "tea", "boots", "coffee"]
    out = cache.embed(texts)
    assert encoder.calls == [["tea", "coffee", "boots"]]
    assert out.shape == (5, 4)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.stack([encoder.vector(t) for t in texts]))
    assert (cache.hits, cache.misses, len(cache)) == (0, 3, 3)


def test_hits_never_call_the_encoder(tmp_path: Path) -> None:
    encoder = CountingEncoder()
    cache = EmbeddingCache(tmp_path, encoder)
    first = cache.embed(["tea", "coffee"])
    encoder.calls.clear()
    again = cache.embed(["coffee", "tea", "coffee"])
    assert encoder.calls == []
    np.testing.assert_array_equal(again, first[[1, 0, 1]])
    assert (cache.hits, cache.misses) == (2, 2)


def test_only_the_new_texts_are_encoded(tmp_path: Path) -> None:
    encoder = CountingEncoder()
    cache = EmbeddingCache(tmp_path, encoder)
    cache.embed(["tea", "coffee"])
    encoder.calls.clear()
    out = cache.embed(["boots", "tea", "pan", "boots"])
    assert encoder.calls == [["boots", "pan"]]
    np.testing.assert_array_equal(out[1], encoder.vector("tea"))
    assert len(cache) == 4


def test_survives_reopening(tmp_path: Path) -> None:
    with EmbeddingCache(tmp_path, CountingEncoder()) as cache:
        stored = cache.embed(["tea", "coffee", "boots"])
    fresh = CountingEncoder()
    with EmbeddingCache(tmp_path, fresh) as reopened:
        assert len(reopened) == 3
        np.testing.assert_array_equal(reopened.embed(["tea", "coffee", "boots"]), stored)
        assert "tea" in reopened
        assert "kettle" not in reopened
    assert fresh.calls == []


def test_encoders_do_not_share_entries(tmp_path: Path) -> None:
    a, b = CountingEncoder("model-a@1"), CountingEncoder("model-b@1")
    cache_a, cache_b = EmbeddingCache(tmp_path, a), EmbeddingCache(tmp_path, b)
    cache_a.embed(["tea", "coffee"])
    out_b = cache_b.embed(["tea"])
    assert b.calls == [["tea"]]
    np.testing.assert_array_equal(out_b[0], b.vector("tea"))
    assert (len(cache_a), len(cache_b)) == (2, 1)


def test_pii_is_masked_before_encoding_hashing_and_storing(tmp_path: Path) -> None:
    encoder = CountingEncoder()
    cache = EmbeddingCache(tmp_path, encoder)
    cache.embed(
        ["Refund to jane.doe@example.com or +44 20 7946 0958", "Refund to bob@test.org or 0171 1234567"]
    )
    # Both mask to the same text: one entry, and the encoder never saw the raw data.
    assert encoder.calls == [["Refund to [EMAIL] or [PHONE]"]]
    assert len(cache) == 1
    cache.close()

    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        (key,) = conn.execute("SELECT key FROM embeddings").fetchone()
    assert bytes(key) == cache_key("fake@1", "Refund to [EMAIL] or [PHONE]")
    raw_key = cache_key("fake@1", "Refund to jane.doe@example.com or +44 20 7946 0958")
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    for secret in (b"jane.doe", b"example.com", b"7946", b"Refund", raw_key):
        assert secret not in stored


def test_empty_input_does_not_call_the_encoder(tmp_path: Path) -> None:
    encoder = CountingEncoder()
    out = EmbeddingCache(tmp_path, encoder).embed([])
    assert out.shape == (0, 4)
    assert encoder.calls == []


def test_bad_inputs_and_encoders_are_reported(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        EmbeddingCache(tmp_path, CountingEncoder()).embed("tea")
    with pytest.raises(LearnerError, match=r"shape \(1, 5\)"):
        EmbeddingCache(tmp_path / "other", WrongShapeEncoder()).embed(["tea"])


def test_a_torn_row_is_re_encoded(tmp_path: Path) -> None:
    encoder = CountingEncoder()
    with EmbeddingCache(tmp_path, encoder) as cache:
        cache.embed(["tea"])
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        conn.execute("UPDATE embeddings SET vector = ?", (b"\x00\x01",))
    encoder.calls.clear()
    with EmbeddingCache(tmp_path, encoder) as cache:
        np.testing.assert_array_equal(cache.embed(["tea"])[0], encoder.vector("tea"))
    assert encoder.calls == [["tea"]]


def test_many_texts_cross_the_sql_parameter_limit(tmp_path: Path) -> None:
    encoder = CountingEncoder()
    texts = [f"item {i}" for i in range(2500)]
    with EmbeddingCache(tmp_path, encoder) as cache:
        first = cache.embed(texts)
        encoder.calls.clear()
        np.testing.assert_array_equal(cache.embed(texts), first)
    assert encoder.calls == []


@pytest.mark.slow
def test_real_encoder_through_the_cache(tmp_path: Path, minilm_encoder: HFEncoder) -> None:
    texts = ["Organic green tea, 20 bags", "Women's leather ankle boots"]
    with EmbeddingCache(tmp_path, minilm_encoder) as cache:
        np.testing.assert_allclose(cache.embed(texts), minilm_encoder.encode(texts), atol=1e-6)
        assert cache.embed(texts[:1]).shape == (1, 384)
        assert (cache.hits, cache.misses) == (1, 2)


def test_a_long_embedding_interrupted_keeps_the_chunks_it_finished(tmp_path: Path) -> None:
    encoder = FailingAfter(calls=2)
    cache = EmbeddingCache(tmp_path, encoder)
    texts = [f"title {i}" for i in range(25)]
    with pytest.raises(RuntimeError, match="interrupted"):
        embed_in_chunks(cache, texts, chunk=10)  # two chunks done, the third dies
    encoder.calls_left = 10
    again = EmbeddingCache(tmp_path, encoder)
    embed_in_chunks(again, texts, chunk=10)
    assert (again.hits, again.misses) == (20, 5)  # only the unfinished chunk was encoded again
