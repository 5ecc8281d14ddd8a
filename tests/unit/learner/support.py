"""Helpers shared by the learner tests."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray


class CountingEncoder:
    """Deterministic fake: each text maps to a vector seeded by its hash; every call is recorded."""

    def __init__(self, encoder_id: str = "fake@1", dim: int = 4) -> None:
        self._id = encoder_id
        self._dim = dim
        self.calls: list[list[str]] = []

    @property
    def encoder_id(self) -> str:
        return self._id

    @property
    def dim(self) -> int:
        return self._dim

    def vector(self, text: str) -> NDArray[np.float32]:
        seed = int.from_bytes(hashlib.sha256(f"{self._id}|{text}".encode()).digest()[:8], "little")
        return np.random.default_rng(seed).normal(size=self._dim).astype(np.float32)

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        self.calls.append(list(texts))
        return np.stack([self.vector(t) for t in texts]) if texts else np.empty((0, self._dim), np.float32)
