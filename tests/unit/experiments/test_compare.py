"""Label-efficiency known answers and the comparison outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from experiments.compare import label_efficiency, labels_to_reach, mean_curve, summarize, write_outputs


def test_labels_to_reach_interpolates_between_rounds() -> None:
    assert labels_to_reach([100, 200, 300], [0.5, 0.7, 0.9], 0.8) == pytest.approx(250.0)
    assert labels_to_reach([100, 200, 300], [0.5, 0.7, 0.9], 0.4) == 100.0
    assert labels_to_reach([100, 200, 300], [0.5, 0.7, 0.9], 0.95) is None
    # First crossing counts, even if the curve dips afterwards.
    assert labels_to_reach([100, 200, 300, 400], [0.5, 0.8, 0.6, 0.8], 0.8) == 200.0


def test_label_efficiency_known_answer() -> None:
    curves = {
        "random": ([200, 400, 600, 800, 1000], [0.5, 0.6, 0.7, 0.75, 0.8]),
        "margin": ([200, 400, 600, 800, 1000], [0.5, 0.7, 0.8, 0.85, 0.9]),
        "slow": ([200, 400, 600, 800, 1000], [0.4, 0.5, 0.6, 0.7, 0.78]),
    }
    ratios = label_efficiency(curves)
    assert ratios["random"] == 1.0
    assert ratios["margin"] == pytest.approx(600 / 1000)
    assert ratios["slow"] is None
    with pytest.raises(ValueError, match="random"):
        label_efficiency({"margin": curves["margin"]})


def _rows(accs: list[float], esc: list[float]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for i, (a, e) in enumerate(zip(accs, esc, strict=True)):
        row: dict[str, Any] = {
            "round": i,
            "labels_used": 200 + 500 * i,
            "corrections": 500 * i,
            "accuracy": a,
            "macro_f1": a,
            "auto_accept_coverage": 1 - e,
            "test_escalation_rate": e,
            "risk_coverage": {"coverage": [0.5, 1.0], "risk": [0.01, 1 - a]},
        }
        if i:
            row |= {"corrections_at_routing": 500 * (i - 1), "escalation_rate": e}
        rows.append(row)
    return rows


def test_mean_curve_averages_seeds() -> None:
    runs = [_rows([0.5, 0.7], [1.0, 0.8]), _rows([0.7, 0.9], [1.0, 0.6])]
    xs, ys, lo, hi = mean_curve(runs, "labels_used", "accuracy")
    assert xs.tolist() == [200, 700]
    assert ys.tolist() == pytest.approx([0.6, 0.8])
    assert lo.tolist() == [0.5, 0.7]
    assert hi.tolist() == [0.7, 0.9]


def test_summary_and_files(tmp_path: Path) -> None:
    results = {
        "random": [_rows([0.5, 0.6, 0.7, 0.8, 0.8, 0.8, 0.8], [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])],
        "margin": [_rows([0.5, 0.8, 0.85, 0.9, 0.9, 0.9, 0.9], [1.0, 0.8, 0.6, 0.4, 0.3, 0.2, 0.1])],
    }
    summary = write_outputs(results, tmp_path, target=0.95, command="hitl compare --catalog x.jsonl")
    # random first reaches 0.8 at 1,700 labels, margin at 700.
    assert summary["strategies"]["margin"]["label_efficiency_ratio"] == pytest.approx(700 / 1700)
    assert summary["best_strategy"] == "margin"
    # Escalation after 1k corrections = the batch routed by the model trained with 1,000 corrections.
    assert summary["strategies"]["margin"]["escalation_rate_after_1000"] == pytest.approx(0.4)
    assert summary["strategies"]["random"]["escalation_rate_after_3000"] == pytest.approx(0.4)
    assert summary["strategies"]["margin"]["test_escalation_rate_after_1000"] == pytest.approx(0.6)
    for name in ("learning_curves.png", "escalation_curves.png", "risk_coverage.png", "summary.md"):
        assert (tmp_path / name).stat().st_size > 0
    assert json.loads((tmp_path / "summary.json").read_text())["best_strategy"] == "margin"
    assert "hitl compare --catalog x.jsonl" in (tmp_path / "summary.md").read_text()


def test_summary_without_a_winner() -> None:
    summary = summarize(
        {"random": [_rows([0.5, 0.9], [1.0, 0.5])], "margin": [_rows([0.5, 0.6], [1.0, 1.0])]}, 0.95
    )
    assert summary["best_strategy"] is None
    assert summary["strategies"]["margin"]["label_efficiency_ratio"] is None
