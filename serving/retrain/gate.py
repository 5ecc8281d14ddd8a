"""The promotion gate as production applies it: `learner.gate.GatePolicy` with the retrain settings."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from learner.gate import AuditScores, GateDecision, GatePolicy
from serving.settings import RetrainSettings


def gate_policy(retrain: RetrainSettings) -> GatePolicy:
    return GatePolicy(retrain.accuracy_tolerance, retrain.coverage_tolerance, retrain.gate_alpha)


def gate(
    challenger: AuditScores,
    champion: AuditScores | None,
    inclusion: NDArray[np.float64],
    retrain: RetrainSettings,
) -> GateDecision:
    """The paired gate on the audits, with the margins and level from `retrain` settings."""
    return gate_policy(retrain).decide(challenger, champion, inclusion)
