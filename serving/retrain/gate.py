"""The promotion gate as production applies it: `learner.gate.paired_gate` with the retrain settings."""

from __future__ import annotations

import logging

import numpy as np
from numpy.typing import NDArray

from hitl.settings import Settings
from learner.gate import AuditScores, GateDecision, paired_gate

logger = logging.getLogger(__name__)


def gate(
    challenger: AuditScores,
    champion: AuditScores | None,
    inclusion: NDArray[np.float64],
    settings: Settings,
) -> GateDecision:
    """`learner.gate.paired_gate` on the audits, with the margins and level from `retrain` settings."""
    if champion is None:
        return GateDecision(True, "no champion to beat")
    if not len(inclusion):
        return GateDecision(True, "no reviewed audits yet to compare on: the challenger is certified on none")
    retrain = settings.retrain
    return paired_gate(
        challenger.correct,
        champion.correct,
        challenger.accepted,
        champion.accepted,
        inclusion,
        accuracy_margin=retrain.accuracy_tolerance,
        coverage_margin=retrain.coverage_tolerance,
        alpha=retrain.gate_alpha,
    )
