"""Guarantee experiment: pass share known answers and a tiny end-to-end run."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.guarantee import GuaranteeConfig, pass_share, run_guarantee, summarize_guarantee, upper_bound
from learner.training import TrainingConfig
from tests.unit.experiments.support import tiny_dataset


def test_pass_share_known_answer() -> None:
    assert pass_share([0.96, 0.95, 0.94, 0.99], 0.95) == 0.75
    assert pass_share([None, 0.9, 1.0], 0.95) == 0.5  # a run that accepted nothing is left out
    assert pass_share([None, None], 0.95) is None


def test_upper_bound_known_answers() -> None:
    assert upper_bound(20, 20) == 1.0
    # 0 successes of 10: upper bound 1 - 0.05 ** (1 / 10).
    assert upper_bound(0, 10) == pytest.approx(1 - 0.05 ** (1 / 10))
    assert upper_bound(19, 20) > 0.95 > 19 / 20 - 0.01


def test_summary_counts_runs_and_classes() -> None:
    rows = [
        {
            "auto_accept_accuracy": 0.97,
            "coverage": 0.4,
            "accuracy": 0.8,
            "classes_checked": 3,
            "classes_passed": 3,
        },
        {
            "auto_accept_accuracy": 0.93,
            "coverage": 0.2,
            "accuracy": 0.8,
            "classes_checked": 2,
            "classes_passed": 1,
        },
    ]
    summary = summarize_guarantee(rows, target=0.95, delta=0.05)
    assert summary["pass_share"] == 0.5
    assert summary["met"] is False
    assert summary["per_class_pass_share"] == pytest.approx(4 / 5)
    assert summary["coverage_mean"] == pytest.approx(0.3)
    assert summary["auto_accept_accuracy_min"] == 0.93


def test_tiny_run_end_to_end() -> None:
    data, x = tiny_dataset()
    config = GuaranteeConfig(
        splits=2,
        train_size=150,
        training=TrainingConfig(epochs=30, device="cpu", target_accuracy=0.6),
    )
    rows = run_guarantee(data, x, config)
    assert [r["split"] for r in rows] == [0, 1]
    for row in rows:
        assert row["n_train"] == 150
        assert 0.0 <= row["coverage"] <= 1.0
        assert row["classes_passed"] <= row["classes_checked"]
    # Two different splits really differ.
    assert rows[0]["accuracy"] != rows[1]["accuracy"] or rows[0]["coverage"] != rows[1]["coverage"]
    assert np.isfinite(summarize_guarantee(rows, target=0.6, delta=0.05)["coverage_mean"])
