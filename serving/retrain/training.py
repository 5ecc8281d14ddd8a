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
from learner.encoder import TextEncoder
from learner.evaluation import EvaluationReport, evaluate
from learner.features import HeadInputs
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
    """The configured encoder behind the embedding cache serving uses (so predicted items are hits)."""

    def __init__(
        self, settings: AppSettings, *, encoder_factory: Callable[[str], TextEncoder] | None = None
    ) -> None:
        self.settings = settings
        self._factory = encoder_factory
        self._cache: EmbeddingCache | None = None
        self._lock = threading.Lock()

    @property
    def encoder_ref(self) -> str:
        return self.settings.learner.encoder

    def _get(self) -> EmbeddingCache:
        with self._lock:
            if self._cache is None:
                learner = self.settings.learner
                made = self._factory(learner.encoder) if self._factory is not None else None
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
