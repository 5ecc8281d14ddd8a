"""`fit_head`: the one place a training configuration becomes a fitted head."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from learner.training import TrainingConfig, fit_head


def test_fit_head_uses_the_configured_head_and_learns_separable_classes() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(3, 8) * 4.0
    y = np.repeat(["a", "b", "c"], 40)
    x = centres[np.repeat(np.arange(3), 40)] + rng.standard_normal((120, 8))
    config = replace(TrainingConfig(device="cpu"), epochs=7, weight_decay=3e-3)
    head = fit_head(x.astype(np.float32), list(y), config)
    assert (head.epochs, head.weight_decay, head.class_weight) == (7, 3e-3, config.class_weight)
    assert list(head.classes_) == ["a", "b", "c"]
    assert (head.predict(x.astype(np.float32)) == y).mean() > 0.95
