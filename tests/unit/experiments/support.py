"""A fast, seeded fake encoder and a tiny synthetic dataset for the experiment tests."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from learner.data import LabeledDataset, build_dataset
from learner.synthetic import generate_catalog

DIM = 64
_TOKEN = re.compile(r"[a-z0-9]+")


class HashingEncoder:
    """Bag of words hashed into 64 signed buckets, L2-normalised: deterministic and instant."""

    encoder_id = "hashing-bow-64"
    dim = DIM

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for i, text in enumerate(texts):
            for token in _TOKEN.findall(text.lower()):
                digest = hashlib.blake2b(token.encode(), digest_size=8).digest()
                bucket = int.from_bytes(digest[:4], "big") % DIM
                out[i, bucket] += 1.0 if digest[4] & 1 else -1.0
            norm = float(np.linalg.norm(out[i]))
            out[i] = out[i] / norm if norm > 0 else out[i]
        return out


def tiny_dataset(n_items: int = 900) -> tuple[LabeledDataset, NDArray[np.float32]]:
    data = build_dataset(generate_catalog(n_items, seed=0), level=2, min_class_size=20)
    return data, HashingEncoder().encode([str(t) for t in data.texts])
