"""What the head sees: the encoder embedding, optionally with hashed n-gram features appended ("hybrid").

Product titles are short and lexical: brand names, units and words like "shampoo" or "basmati" decide
the category, and a frozen sentence encoder blurs them. Signed hashed word and character n-grams
(`sklearn.feature_extraction.text.HashingVectorizer`) keep them. Hashing is deterministic and
stateless (no vocabulary to fit or ship), so a bundle only records the `FeatureSpec`, and serving
recomputes exactly what training saw. The embedding cache keeps storing only the encoder part: the
n-gram part is cheap to recompute for a request (a retrain's thousands of titles reuse their rows,
`NgramMemo`).

Layout of a hybrid input row: ``[embedding (d) | ngram_weight * ngrams (ngram_dims)]``, so the
encoder part is always the first ``d`` columns (`FeatureSpec.encoder_part`); out-of-distribution
checks use only that part.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from learner.data import brand_in_text, normalize_title
from learner.pii import mask_pii
from learner.settings import LearnerSettings

FeatureKind = Literal["embedding", "hybrid"]
FEATURE_KINDS: tuple[str, ...] = ("embedding", "hybrid")


@dataclass(frozen=True)
class FeatureSpec:
    """How texts and their embeddings become head inputs; recorded in every bundle's manifest.

    Parameters
    ----------
    kind : "embedding" (the encoder embedding only) or "hybrid" (embedding + hashed n-grams)
    ngram_dims : hashed n-gram columns (hybrid only)
    word_ngrams, char_ngrams : inclusive n-gram ranges of words and of characters within word
        boundaries (``char_wb``)
    ngram_weight : scale of the (unit-norm) n-gram block against the (unit-norm) embedding; with the
        head's shared learning rate and weight decay, > 1 lets the lexical evidence count more
    sublinear_tf : ``sign * log1p(|count|)`` instead of raw hashed counts
    brand_token : add the item's brand (`learner.data.brand_in_text`) as one word, so a brand is one
        feature and not only scattered n-grams of its name (measured: experiments/results/learner)
    """

    kind: FeatureKind = "embedding"
    ngram_dims: int = 4096
    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] = (2, 5)
    ngram_weight: float = 1.0
    sublinear_tf: bool = False
    brand_token: bool = False

    @classmethod
    def of(cls, settings: LearnerSettings) -> FeatureSpec:
        """The spec the learner settings configure."""
        return cls(
            kind=settings.features,
            ngram_dims=settings.ngram_dims,
            word_ngrams=settings.word_ngram_range,
            char_ngrams=settings.char_ngram_range,
            ngram_weight=settings.ngram_weight,
            sublinear_tf=settings.sublinear_tf,
            brand_token=settings.brand_token,
        )

    def __post_init__(self) -> None:
        if self.kind not in FEATURE_KINDS:
            raise ValueError(f"features kind must be one of {', '.join(FEATURE_KINDS)}, got {self.kind!r}")
        if self.ngram_dims < 1:
            raise ValueError(f"ngram_dims must be >= 1, got {self.ngram_dims}")
        for name in ("word_ngrams", "char_ngrams"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ValueError(f"{name} must be (low, high) with 1 <= low <= high, got ({low}, {high})")
        if not (self.ngram_weight > 0 and np.isfinite(self.ngram_weight)):
            raise ValueError(f"ngram_weight must be a finite positive number, got {self.ngram_weight}")

    @property
    def n_extra(self) -> int:
        """Columns appended to the embedding."""
        return self.ngram_dims if self.kind == "hybrid" else 0

    def ngram_features(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """(n, ngram_dims) float32: word and char n-gram hashes, each l2-normalised, summed, l2-normalised."""
        items = self._prepared(texts)
        if not items:
            return np.empty((0, self.ngram_dims), dtype=np.float32)
        if len(items) <= _FAST_PATH_MAX_TEXTS:
            return self._ngram_features_few(items)
        out: NDArray[np.float32] = np.asarray(self._ngram_rows(items).toarray(), dtype=np.float32)
        return out

    def ngram_rows(self, texts: Sequence[str]) -> Any:
        """`ngram_features` as a scipy CSR matrix (float32): the same numbers, ~5% of them nonzero."""
        return self._ngram_rows(self._prepared(texts))

    def _prepared(self, texts: Sequence[str]) -> list[str]:
        # Masked here too (idempotent): whoever calls, no fragment of personal data is hashed into
        # the head's weights.
        items = [mask_pii(str(t)) for t in texts]
        return [with_brand_token(t) for t in items] if self.brand_token else items

    def _ngram_rows(self, items: list[str]) -> Any:
        import sklearn
        from scipy import sparse
        from sklearn.preprocessing import normalize

        if not items:
            return sparse.csr_matrix((0, self.ngram_dims), dtype=np.float32)
        blocks = []
        # Serving calls this once per request with a handful of titles: sklearn's per-call parameter
        # validation was most of the ~0.7 ms it cost for one title (experiments/bench_serving).
        with sklearn.config_context(skip_parameter_validation=True, assume_finite=True):
            for vectorizer in _vectorizers(self.ngram_dims, self.word_ngrams, self.char_ngrams):
                block = vectorizer.transform(items)
                if self.sublinear_tf:
                    block.data = np.sign(block.data) * np.log1p(np.abs(block.data))
                blocks.append(normalize(block))
            combined = normalize(blocks[0] + blocks[1])
        return combined.astype(np.float32).tocsr()

    def _ngram_features_few(self, items: list[str]) -> NDArray[np.float32]:
        """The same numbers as the sparse path (same analyzers, same murmurhash3 indices and signs as
        sklearn's FeatureHasher, same normalisation; tests compare them bit for bit), built densely per
        text: for the one to a few titles of a serving request it is ~6x cheaper than the sparse
        machinery, whose fixed cost per call dominated the single-item request."""
        from sklearn.utils import murmurhash3_32

        dims = self.ngram_dims
        analyzers = [v.build_analyzer() for v in _vectorizers(dims, self.word_ngrams, self.char_ngrams)]
        out = np.empty((len(items), dims), dtype=np.float32)
        for row, text in enumerate(items):
            combined = np.zeros(dims, dtype=np.float64)
            for analyze in analyzers:
                block = np.zeros(dims, dtype=np.float64)
                for feature in analyze(text):
                    h = int(murmurhash3_32(feature, 0))
                    # FeatureHasher's index of the one hash whose absolute value does not fit
                    index = (2147483647 - (dims - 1)) % dims if h == -2147483648 else abs(h) % dims
                    block[index] += 1.0 if h >= 0 else -1.0
                if self.sublinear_tf:
                    block = np.sign(block) * np.log1p(np.abs(block))
                combined += _unit(block)
            out[row] = _unit(combined)
        return out

    def model_inputs(self, embeddings: ArrayLike, texts: Sequence[str]) -> NDArray[np.float32]:
        """Head inputs for `texts` whose encoder embeddings are `embeddings` ((n, d), same order)."""
        x = np.asarray(embeddings, dtype=np.float32)
        if self.kind == "embedding":
            return x
        if x.ndim != 2 or x.shape[0] != len(texts):
            raise ValueError(f"{len(texts)} texts but embeddings of shape {x.shape}")
        ngrams = self.ngram_features(texts)
        if self.ngram_weight != 1.0:
            ngrams *= np.float32(self.ngram_weight)
        return np.hstack([x, ngrams])

    def sparse_inputs(
        self, embeddings: ArrayLike, texts: Sequence[str], memo: NgramMemo | None = None
    ) -> HeadInputs:
        """`model_inputs`, the same numbers, as a scipy CSR matrix for hybrid features (the head fits
        ~3x faster on it than on the dense matrix, which is ~8x larger), with the n-gram rows of texts
        `memo` has seen reused instead of hashed again. Embedding-only inputs stay a dense array."""
        x = np.asarray(embeddings, dtype=np.float32)
        if self.kind == "embedding":
            return x
        from scipy import sparse

        if x.ndim != 2 or x.shape[0] != len(texts):
            raise ValueError(f"{len(texts)} texts but embeddings of shape {x.shape}")
        ngrams = memo.rows(self, texts) if memo is not None else self.ngram_rows(texts)
        if self.ngram_weight != 1.0:
            ngrams = ngrams * np.float32(self.ngram_weight)
        return sparse.hstack([sparse.csr_matrix(x), ngrams], format="csr", dtype=np.float32)

    def encoder_part(self, inputs: HeadInputs) -> NDArray[np.float32]:
        """The embedding columns of head inputs built by `model_inputs` or `sparse_inputs`."""
        given: Any = inputs
        sparse = hasattr(given, "tocsr")
        x: Any = given.tocsr() if sparse else np.asarray(given, dtype=np.float32)
        if self.n_extra == 0:
            return np.asarray(x.toarray(), dtype=np.float32) if sparse else x
        if x.ndim != 2 or x.shape[1] <= self.n_extra:
            raise ValueError(
                f"inputs of shape {x.shape} hold no embedding before {self.n_extra} n-gram columns"
            )
        part = x[:, : x.shape[1] - self.n_extra]
        return np.asarray(part.toarray(), dtype=np.float32) if sparse else part

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["word_ngrams"] = list(self.word_ngrams)
        out["char_ngrams"] = list(self.char_ngrams)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> FeatureSpec:
        """Inverse of `to_dict`; ``None`` (bundles written before features were recorded) = embedding."""
        if data is None:
            return cls()
        return cls(
            kind=data["kind"],
            ngram_dims=int(data.get("ngram_dims", 4096)),
            word_ngrams=_pair(data.get("word_ngrams", (1, 2))),
            char_ngrams=_pair(data.get("char_ngrams", (2, 5))),
            ngram_weight=float(data.get("ngram_weight", 1.0)),
            sublinear_tf=bool(data.get("sublinear_tf", False)),
            brand_token=bool(data.get("brand_token", False)),
        )


# Head inputs: a dense (n, d) array, or for training a scipy CSR matrix of the same numbers (scipy is
# untyped here, so the union reads as Any to mypy).
HeadInputs = NDArray[np.float32] | Any


class NgramMemo:
    """The n-gram rows of texts already hashed, for the retrain worker's lifetime.

    A retrain after one correction hashes the same ~20,000 titles again: the character n-grams are
    most of building the head inputs (~8 s of a 20,000-label bigbasket retrain on this CPU). Rows
    depend only on the text and the spec's n-gram settings, so they are kept per (settings, text),
    the oldest dropped beyond `max_texts` (~1.6 kB a title at 4,096 columns).
    """

    def __init__(self, max_texts: int) -> None:
        if max_texts < 0:
            raise ValueError(f"max_texts must be >= 0, got {max_texts}")
        self.max_texts = max_texts
        self._rows: dict[tuple[FeatureSpec, str], tuple[NDArray[np.int32], NDArray[np.float32]]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self, spec: FeatureSpec, texts: Sequence[str]) -> Any:
        """`spec.ngram_rows(texts)`, the same numbers, hashing only the texts not seen before."""
        from scipy import sparse

        # Rows depend on every n-gram setting but not on the kind or the weight (applied after).
        key = replace(spec, kind="hybrid", ngram_weight=1.0)
        texts = [str(t) for t in texts]
        missing = list(dict.fromkeys(t for t in texts if (key, t) not in self._rows))
        self.misses += len(missing)
        self.hits += len(texts) - len(missing)
        fresh = spec.ngram_rows(missing)
        new = {
            t: (
                fresh.indices[fresh.indptr[i] : fresh.indptr[i + 1]].astype(np.int32),
                fresh.data[fresh.indptr[i] : fresh.indptr[i + 1]].astype(np.float32),
            )
            for i, t in enumerate(missing)
        }
        got = [self._rows.get((key, t)) or new[t] for t in texts]
        for t, row in new.items():
            self._remember((key, t), row)
        lengths = np.fromiter((len(i) for i, _ in got), dtype=np.int64, count=len(got))
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        indices = np.concatenate([i for i, _ in got]) if got else np.empty(0, np.int32)
        data = np.concatenate([v for _, v in got]) if got else np.empty(0, np.float32)
        return sparse.csr_matrix((data, indices, indptr), shape=(len(texts), spec.ngram_dims))

    def _remember(
        self, key: tuple[FeatureSpec, str], row: tuple[NDArray[np.int32], NDArray[np.float32]]
    ) -> None:
        if self.max_texts == 0:
            return
        while len(self._rows) >= self.max_texts:
            del self._rows[next(iter(self._rows))]
        self._rows[key] = row


BRAND_TOKEN_PREFIX = "brandtoken"


def with_brand_token(text: str) -> str:
    """`text` with its brand appended as one word (``"brandtoken" + normalized brand without spaces``)."""
    brand = brand_in_text(text)
    key = normalize_title(brand).replace(" ", "") if brand else ""
    return f"{text} {BRAND_TOKEN_PREFIX}{key}" if key else text


# Up to this many texts per call take the dense per-text path (`FeatureSpec._ngram_features_few`).
_FAST_PATH_MAX_TEXTS = 16


def _unit(vector: NDArray[np.float64]) -> NDArray[np.float64]:
    norm = float(np.sqrt((vector * vector).sum()))
    return vector / norm if norm else vector


@functools.lru_cache(maxsize=8)
def _vectorizers(
    n_features: int, word_ngrams: tuple[int, int], char_ngrams: tuple[int, int]
) -> tuple[Any, Any]:
    """The word and char_wb hashers of one spec (stateless, so one pair serves every call)."""
    from sklearn.feature_extraction.text import HashingVectorizer

    return tuple(
        HashingVectorizer(
            n_features=n_features,
            analyzer=analyzer,
            ngram_range=ngram_range,
            norm=None,
            alternate_sign=True,
            lowercase=True,
            dtype=np.float64,
        )
        for analyzer, ngram_range in (("word", word_ngrams), ("char_wb", char_ngrams))
    )


def _pair(value: Any) -> tuple[int, int]:
    low, high = value
    return int(low), int(high)
