from __future__ import annotations

import numpy as np
import pytest

from learner.neighbours import TextNeighbours

TEXTS = [
    "Stainless steel frying pan 28 cm",
    "Trail running shoes, men",
    "Stainless steel frying pan 24 cm",
    "Organic green tea 100 bags",
    "Cast iron frying pan",
]


def test_the_same_product_in_another_size_comes_first() -> None:
    index = TextNeighbours(TEXTS)
    idx, score = index.nearest(["Stainless steel frying pan 32 cm", "green tea bags"], k=3)
    assert idx.shape == score.shape == (2, 3)
    assert set(idx[0, :2]) == {0, 2}
    assert idx[0, 2] == 4
    assert idx[1, 0] == 3
    assert np.all(np.diff(score, axis=1) <= 1e-6), "most similar first"
    assert np.all((score >= 0) & (score <= 1 + 1e-6))


def test_padding_when_fewer_texts_or_no_shared_ngrams() -> None:
    idx, score = TextNeighbours(TEXTS[:2]).nearest(["frying pan"], k=4)
    assert idx[0, 2:].tolist() == [-1, -1]
    assert score[0, 2:].tolist() == [0.0, 0.0]
    none_shared, _ = TextNeighbours(TEXTS).nearest(["zzqx"], k=2)
    assert none_shared.tolist() == [[-1, -1]]
    empty, _ = TextNeighbours([]).nearest(["frying pan"], k=3)
    assert empty.tolist() == [[-1, -1, -1]]
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        TextNeighbours(TEXTS).nearest(["x"], k=0)
