"""The promotion gate as production applies it: `learner.gate.GatePolicy` with the retrain settings."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from learner.gate import AuditScores, GateDecision, GatePolicy
from serving.settings import AppSettings


def gate_policy(settings: AppSettings) -> GatePolicy:
    retrain = settings.retrain
    return GatePolicy(retrain.accuracy_tolerance, retrain.coverage_tolerance, retrain.gate_alpha)


def gate(
    challenger: AuditScores,
    champion: AuditScores | None,
    inclusion: NDArray[np.float64],
    settings: AppSettings,
) -> GateDecision:
    """The paired gate on the audits, with the margins and level from `retrain` settings."""
    return gate_policy(settings).decide(challenger, champion, inclusion)
