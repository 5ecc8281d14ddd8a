"""Texts -> embeddings through the shared cache, and the training function a run calls."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from learner.bundle import ModelBundle
from learner.cache import EmbeddingCache, cached_encoder
from learner.encoder import TextEncoder, encoder_from
from learner.evaluation import EvaluationReport, evaluate
from learner.features import HeadInputs
from learner.pii import describe_error
from learner.training import AuditDesign, TrainingConfig, TrainingResult, train_bundle
from serving.embeddings import vector_store_for
from serving.settings import AppSettings


class Embedder(Protocol):
    """Texts -> embeddings of one encoder (through the shared cache)."""

    @property
    def encoder_id(self) -> str: ...

    @property
    def encoder_ref(self) -> str: ...

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]: ...


class CachedEmbedder:
    """The configured encoder (or the one at `ref`, e.g. inside a champion's bundle) behind the
    embedding cache serving uses (so predicted items are hits)."""

    def __init__(
        self,
        settings: AppSettings,
        *,
        encoder_factory: Callable[[str], TextEncoder] | None = None,
        ref: str | None = None,
    ) -> None:
        self.settings = settings
        self._factory = encoder_factory
        self._ref = ref
        self._cache: EmbeddingCache | None = None
        self._lock = threading.Lock()

    @property
    def encoder_ref(self) -> str:
        return self._ref or self.settings.learner.encoder

    def _get(self) -> EmbeddingCache:
        with self._lock:
            if self._cache is None:
                learner = self.settings.learner
                if self._factory is not None:
                    made: TextEncoder | None = self._factory(self.encoder_ref)
                else:
                    made = encoder_from(learner, self._ref) if self._ref is not None else None
                self._cache = cached_encoder(
                    learner, self.settings.cache_dir, encoder=made, vectors=vector_store_for(self.settings)
                )
            return self._cache

    @property
    def encoder_id(self) -> str:
        return self._get().encoder_id

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return self._get().embed(list(texts))

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None


class EncoderEmbedder:
    """An encoder without the shared cache: a fine-tuned challenger's vectors would only fill it (most
    challengers are never served), and serving embeds what it needs once a promotion loads it."""

    def __init__(self, encoder: TextEncoder, encoder_ref: str) -> None:
        self.encoder = encoder
        self.encoder_ref = encoder_ref

    @property
    def encoder_id(self) -> str:
        return self.encoder.encoder_id

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return self.encoder.encode(list(texts))


class EncoderUnavailableError(RuntimeError):
    """A bundle's encoder cannot be loaded here, or does not reproduce the id it was trained with."""


class EmbedderPool:
    """One embedder per encoder in a run, and each text set embedded once per encoder.

    A fine-tuned challenger, or a champion trained on another encoder, is scored on its own
    embeddings: the gate then compares two models whatever encoders they use. Embedders the pool
    loads for a bundle (`load`) are closed with the pool.
    """

    def __init__(self, embedders: Sequence[Embedder], load: Callable[[ModelBundle], Embedder]) -> None:
        self._known = list(embedders)
        self._load = load
        self._by_id: dict[str, Embedder] = {}
        self._opened: list[Embedder] = []
        self._vectors: dict[tuple[str, str], NDArray[np.float32]] = {}

    def add(self, embedder: Embedder) -> None:
        """Make `embedder` (e.g. the run's fine-tuned encoder) one of the run's own."""
        self._known.insert(0, embedder)

    def embedder(self, encoder_id: str, bundle: ModelBundle | None = None) -> Embedder:
        """The embedder whose encoder is `encoder_id`; loaded from `bundle` when none of the run's is."""
        if encoder_id in self._by_id:
            return self._by_id[encoder_id]
        for known in self._known:
            if known.encoder_id == encoder_id:
                self._by_id[encoder_id] = known
                return known
        if bundle is None:
            raise EncoderUnavailableError(f"no embedder for encoder {encoder_id!r} in this run")
        try:
            loaded = self._load(bundle)
            self._opened.append(loaded)
            loaded_id = loaded.encoder_id
        except Exception as exc:
            raise EncoderUnavailableError(
                f"cannot load encoder {bundle.encoder_ref!r}: {describe_error(exc)}"
            ) from exc
        if loaded_id != encoder_id:
            raise EncoderUnavailableError(
                f"encoder {bundle.encoder_ref!r} is {loaded_id!r}, not {encoder_id!r} as trained"
            )
        self._by_id[encoder_id] = loaded
        return loaded

    def embed(
        self, encoder_id: str, name: str, texts: Sequence[str], bundle: ModelBundle | None = None
    ) -> NDArray[np.float32]:
        """`texts` (the run's set called `name`) embedded by encoder `encoder_id`, once per run."""
        key = (encoder_id, name)
        if key not in self._vectors:
            if not texts:
                self._vectors[key] = np.empty((0, 0), dtype=np.float32)
            else:
                self._vectors[key] = self.embedder(encoder_id, bundle).embed(list(texts))
        return self._vectors[key]

    def close(self) -> None:
        for opened in self._opened:
            close = getattr(opened, "close", None)
            if close is not None:
                close()
        self._opened.clear()


# ---------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainingInputs:
    x_train: HeadInputs
    y_train: list[str]
    x_calibration: HeadInputs
    y_calibration: list[str]
    config: TrainingConfig
    encoder_ref: str
    encoder_id: str
    design: AuditDesign | None = None  # how the calibration items (the audits) were drawn
    # The champion, to start the head from (learner.head.warm_start_iterations).
    init: ModelBundle | None = None


TrainFn = Callable[[TrainingInputs], TrainingResult]


def default_train(inputs: TrainingInputs) -> TrainingResult:
    """The frozen-encoder head (`learner.training.train_bundle`)."""
    return train_bundle(
        inputs.x_train,
        inputs.y_train,
        inputs.x_calibration,
        inputs.y_calibration,
        config=inputs.config,
        encoder_ref=inputs.encoder_ref,
        encoder_id=inputs.encoder_id,
        design=inputs.design,
        init=inputs.init,
    )


def holdout_report(
    model_proba: NDArray[np.float64],
    labels: Sequence[str],
    y: Sequence[str],
    result_thresholds: Any,
    target: float,
) -> tuple[EvaluationReport | None, NDArray[np.int64]]:
    """Evaluate on the holdout rows whose label the model knows; (None, empty) when there is none."""
    index = {c: i for i, c in enumerate(labels)}
    y_idx = np.array([index.get(label, -1) for label in y], dtype=np.int64)
    known = y_idx >= 0
    if not known.any():
        return None, y_idx[known]
    return evaluate(model_proba[known], y_idx[known], result_thresholds, target), y_idx[known]
