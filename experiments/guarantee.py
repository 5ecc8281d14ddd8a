"""Does the threshold guarantee hold? Repeat calibration on random splits and count the passes.

For each of `splits` runs i = 0, 1, ...: `group_split(seed=i)` deals the title groups into train /
calibration / test (``calibration_fraction`` / ``test_fraction``); the head is trained on
``train_size`` random rows of the train part (the learner's production path: `train_bundle`, i.e.
head, temperature, the certified threshold at (target, delta) under ``training.guarantee``, on
``training.features`` inputs); then on the test part we measure

- ``auto_accept_accuracy``: realised accuracy of the auto-accepted test items (all classes pooled);
- ``coverage``: share of test items auto-accepted;
- per class with a finite threshold and at least ``min_class_test`` accepted test items, whether that
  class's realised auto-accept accuracy is >= target, and whether it is *consistent* with the target
  (its one-sided 95% upper confidence bound is >= target): a class whose true accuracy is just above
  the target fails the raw check on a small test sample about half the time, so the raw per-class share
  mixes test-sample noise into the guarantee's miss rate.

A run *passes* when its pooled auto-accept accuracy is >= target. The thresholds promise (per class
in ``per_class`` mode; for all auto-accepted items together in ``pooled`` mode)
``P(accuracy of accepted items >= target) >= 1 - delta`` over calibration draws, so the pass share
is expected to be >= 1 - delta (the realised accuracy is itself measured on a finite test split, which
adds some noise in both directions).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from learner.data import LabeledDataset, group_split
from learner.training import TrainingConfig, train_bundle

__all__ = ["GuaranteeConfig", "pass_share", "run_guarantee", "summarize_guarantee"]


@dataclass(frozen=True)
class GuaranteeConfig:
    splits: int = 20
    train_size: int = 3000
    calibration_fraction: float = 0.4
    test_fraction: float = 0.4
    min_class_test: int = 20
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def __post_init__(self) -> None:
        if self.splits < 1:
            raise ValueError(f"splits must be >= 1, got {self.splits}")
        if self.train_size < 2:
            raise ValueError(f"train_size must be >= 2, got {self.train_size}")
        if self.min_class_test < 1:
            raise ValueError(f"min_class_test must be >= 1, got {self.min_class_test}")


def pass_share(accuracies: Sequence[float | None], target: float) -> float | None:
    """Share of runs whose realised accuracy is >= target; runs that accepted nothing are left out
    (an empty auto-accept set makes no error). None when no run accepted anything."""
    kept = [a for a in accuracies if a is not None]
    if not kept:
        return None
    return float(np.mean([a >= target for a in kept]))


def upper_bound(successes: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper confidence bound of a binomial proportion."""
    from scipy.stats import beta

    if successes >= n:
        return 1.0
    return float(beta.ppf(confidence, successes + 1, n - successes))


def _one_split(
    data: LabeledDataset, x: NDArray[np.float32], config: GuaranteeConfig, index: int
) -> dict[str, Any]:
    split = group_split(
        data,
        calibration_fraction=config.calibration_fraction,
        test_fraction=config.test_fraction,
        seed=index,
    )
    rng = np.random.default_rng(index)
    train = split.train
    if len(train) > config.train_size:
        train = np.sort(rng.choice(train, size=config.train_size, replace=False))
    training = TrainingConfig(**{**config.training.__dict__, "seed": index})
    result = train_bundle(
        x[train],
        [str(v) for v in data.labels[train]],
        x[split.calibration],
        [str(v) for v in data.labels[split.calibration]],
        config=training,
        encoder_ref="guarantee",
        encoder_id="guarantee",
    )
    bundle = result.bundle
    test = split.test
    proba = bundle.predict_proba(x[test])
    pred_idx = np.argmax(proba, axis=1)
    pred = np.array(bundle.labels, dtype=object)[pred_idx]
    correct = pred == data.labels[test]
    accepted = bundle.thresholds.accept_mask(proba)
    target = training.target_accuracy
    per_class_pass: list[bool] = []
    per_class_consistent: list[bool] = []
    for c in np.flatnonzero(np.isfinite(bundle.thresholds.thresholds)):
        members = accepted & (pred_idx == c)
        n_members = int(members.sum())
        if n_members >= config.min_class_test:
            n_correct = int(correct[members].sum())
            per_class_pass.append(n_correct / n_members >= target)
            per_class_consistent.append(upper_bound(n_correct, n_members) >= target)
    return {
        "split": index,
        "n_train": len(train),
        "n_calibration": len(split.calibration),
        "n_test": len(test),
        "accuracy": float(correct.mean()),
        "coverage": float(accepted.mean()),
        "n_auto_accepted": int(accepted.sum()),
        "auto_accept_accuracy": float(correct[accepted].mean()) if accepted.any() else None,
        "classes_with_threshold": int(np.isfinite(bundle.thresholds.thresholds).sum()),
        "classes_checked": len(per_class_pass),
        "classes_passed": int(sum(per_class_pass)),
        "classes_consistent": int(sum(per_class_consistent)),
    }


def run_guarantee(
    data: LabeledDataset,
    embeddings: NDArray[np.float32],
    config: GuaranteeConfig,
    *,
    on_split: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.shape[0] != len(data):
        raise ValueError(f"embeddings have {emb.shape[0]} rows, the dataset {len(data)}")
    # Head inputs as configured (embedding, or embedding + hashed n-grams), built once for all splits.
    x = config.training.features.model_inputs(emb, [str(t) for t in data.texts])
    rows = []
    for index in range(config.splits):
        row = _one_split(data, x, config, index)
        rows.append(row)
        if on_split is not None:
            on_split(row)
    return rows


def summarize_guarantee(rows: Sequence[Mapping[str, Any]], *, target: float, delta: float) -> dict[str, Any]:
    accuracies = [r["auto_accept_accuracy"] for r in rows]
    checked = sum(int(r["classes_checked"]) for r in rows)
    passed = sum(int(r["classes_passed"]) for r in rows)
    consistent = sum(int(r.get("classes_consistent", 0)) for r in rows)
    share = pass_share(accuracies, target)
    return {
        "target": target,
        "delta": delta,
        "splits": len(rows),
        "pass_share": share,
        "expected_at_least": 1 - delta,
        "met": None if share is None else share >= 1 - delta,
        "per_class_pass_share": passed / checked if checked else None,
        "per_class_checked": checked,
        "per_class_consistent_share": consistent / checked if checked else None,
        "coverage_mean": float(np.mean([r["coverage"] for r in rows])) if rows else None,
        "coverage_min": float(np.min([r["coverage"] for r in rows])) if rows else None,
        "coverage_max": float(np.max([r["coverage"] for r in rows])) if rows else None,
        "auto_accept_accuracy_mean": (
            float(np.mean([a for a in accuracies if a is not None]))
            if any(a is not None for a in accuracies)
            else None
        ),
        "auto_accept_accuracy_min": min((a for a in accuracies if a is not None), default=None),
        "accuracy_mean": float(np.mean([r["accuracy"] for r in rows])) if rows else None,
        "runs": list(rows),
    }


def guarantee_markdown(summary: Mapping[str, Any], command: str | None = None) -> str:
    def fmt(v: Any) -> str:
        return "n/a" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    lines = ["# Threshold guarantee", ""]
    if command:
        lines += ["Reproduce with:", "", "```bash", command, "```", ""]
    lines += [
        f"Target {summary['target']}, delta {summary['delta']}, {summary['splits']} random grouped "
        "train/calibration/test splits.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| runs with realised auto-accept accuracy >= target | {fmt(summary['pass_share'])} "
        f"(expected >= {fmt(summary['expected_at_least'])}) |",
        f"| per-class pass share ({summary['per_class_checked']} class-runs) | "
        f"{fmt(summary['per_class_pass_share'])} |",
        "| per-class share whose test accuracy is not significantly below target "
        f"(one-sided 95% Clopper-Pearson upper bound >= target) | "
        f"{fmt(summary['per_class_consistent_share'])} |",
        f"| coverage (share auto-accepted), mean [min, max] | {fmt(summary['coverage_mean'])} "
        f"[{fmt(summary['coverage_min'])}, {fmt(summary['coverage_max'])}] |",
        f"| realised auto-accept accuracy, mean (min) | {fmt(summary['auto_accept_accuracy_mean'])} "
        f"({fmt(summary['auto_accept_accuracy_min'])}) |",
        f"| overall test accuracy, mean | {fmt(summary['accuracy_mean'])} |",
        "",
    ]
    return "\n".join(lines)
