"""Helpers for the retraining tests: a fast, label-informative encoder and tiny stores."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from hitl.settings import LearnerSettings, RetrainSettings, ServingSettings, Settings
from labeling.webhooks import CorrectionEvent
from serving.store import NewPrediction, Store

WORD = re.compile(r"[a-z]+")


class BagOfWordsEncoder:
    """Texts -> L2-normalised hashed bag of words (numpy only, instant, and it carries the category).

    Two widths are two encoders, as far as a bundle's `encoder_id` goes.
    """

    encoder_ref = "test-bow"

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim
        self.encoder_id = f"test-bow-{dim}"

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in WORD.findall(text.lower()):
                out[i, int(hashlib.md5(word.encode()).hexdigest()[:8], 16) % self.dim] += 1.0
            norm = np.linalg.norm(out[i])
            out[i] /= norm if norm > 0 else 1.0
        return out


class BowEmbedder:
    """`serving.retrain.Embedder` over `BagOfWordsEncoder` (no cache needed)."""

    encoder_ref = BagOfWordsEncoder.encoder_ref

    def __init__(self, dim: int = 64) -> None:
        self.encoder = BagOfWordsEncoder(dim)
        self.encoder_id = self.encoder.encoder_id
        self.embedded = 0  # texts embedded so far

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        self.embedded += len(texts)
        return self.encoder.encode(list(texts))


def retrain_settings(tmp_path: Path, **retrain: object) -> Settings:
    return Settings(
        state_dir=tmp_path,
        learner=LearnerSettings(
            device="cpu",
            target_accuracy=0.9,
            delta=0.2,
            calibration_fraction=0.4,
        ),
        serving=ServingSettings(database_url=f"sqlite:///{tmp_path / 'hitl.db'}", model_poll_interval_s=0),
        retrain=RetrainSettings(**retrain),
    )


_T0 = datetime(2024, 1, 1, tzinfo=UTC)


def correction(
    annotation_id: int, item_id: str, label: str | None, *, action: str = "created", minute: int = 0
) -> CorrectionEvent:
    when = _T0 + timedelta(minutes=minute)
    return CorrectionEvent(
        action=action,  # type: ignore[arg-type]
        annotation_id=annotation_id,
        task_id=annotation_id,
        project_id=1,
        item_id=item_id,
        label=label,
        raw_label=label,
        reviewer_id=7,
        created_at=when,
        updated_at=when,
        lead_time=1.0,
        was_cancelled=False,
        predicted_label=None,
        model_version=None,
        model_score=None,
        source="webhook",
    )


def predicted(
    store: Store,
    version: str,
    item_id: str,
    title: str,
    *,
    escalated: bool,
    reasons: list[str],
    audit_probability: float | None = 0.1,
) -> None:
    store.register_model_version(version, source="test", encoder_id="x", n_labels=2, details={})
    store.record_predictions(
        version,
        [
            NewPrediction(
                item_id=item_id,
                title=title,
                description="",
                brand=None,
                price=None,
                category_hint=None,
                label="A > B",
                confidence=0.5,
                threshold=None,
                top_k=[("A > B", 0.5)],
                decision="escalated" if escalated else "auto_accepted",
                reasons=reasons,
                priority=0.5,
                audit_probability=audit_probability,
            )
        ],
    )
