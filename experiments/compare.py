"""Compare query strategies over several seeds: learning / escalation / risk-coverage PNGs + summary.

`compare` runs `simulate.run_or_skip` for every (strategy, seed) (finished runs are read back, not
re-run) and writes into the output directory:

- ``learning_curves.png``: test accuracy vs labels used (mean over seeds, band = min..max);
- ``escalation_curves.png``: escalation rate of the incoming batch vs corrections the routing model
  was trained with (solid), and the same policy applied to the test split after each retrain (dashed);
- ``risk_coverage.png``: selective risk vs coverage of each strategy's final model (first seed);
- ``summary.json`` and ``summary.md``: per strategy final accuracy, label-efficiency ratio, escalation
  rates after 1k / 3k corrections, auto-accept coverage and realised accuracy.

Label-efficiency ratio: let ``A`` be random sampling's final accuracy (mean over seeds) and
``L(s)`` the labels at which strategy ``s``'s mean learning curve first reaches ``A`` (linear
interpolation between rounds); the ratio is ``L(s) / L(random)``. ``None`` means ``s`` never reached
``A`` within the budget.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from experiments.simulate import RunLogger, SimulationConfig, model_inputs, run_or_skip, value_at
from learner.data import LabeledDataset

__all__ = [
    "label_efficiency",
    "labels_to_reach",
    "mean_curve",
    "run_comparison",
    "summarize",
    "write_outputs",
]

BASELINE = "random"
CHECKPOINTS = (1000, 3000)


def labels_to_reach(labels: Sequence[float], accuracy: Sequence[float], target: float) -> float | None:
    """Labels at which a learning curve first reaches `target`, interpolating linearly between points.

    Parameters
    ----------
    labels : (n,) increasing label counts
    accuracy : (n,) accuracy at each count
    """
    xs = np.asarray(labels, dtype=np.float64)
    ys = np.asarray(accuracy, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(f"labels and accuracy must be 1-D of one length, got {xs.shape} and {ys.shape}")
    for i in range(len(xs)):
        if ys[i] >= target:
            if i == 0 or ys[i] == ys[i - 1]:
                return float(xs[i])
            frac = (target - ys[i - 1]) / (ys[i] - ys[i - 1])
            return float(xs[i - 1] + frac * (xs[i] - xs[i - 1]))
    return None


def mean_curve(
    runs: Sequence[Sequence[Mapping[str, Any]]], x_key: str, y_key: str
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Average rows by round over runs: (x mean, y mean, y min, y max); rounds with a None are dropped."""
    n = min(len(r) for r in runs)
    xs, ys, lo, hi = [], [], [], []
    for i in range(n):
        points = [(r[i].get(x_key), r[i].get(y_key)) for r in runs]
        if any(p is None or q is None for p, q in points):
            continue
        xv = np.array([p for p, _ in points], dtype=np.float64)
        yv = np.array([q for _, q in points], dtype=np.float64)
        xs.append(xv.mean())
        ys.append(yv.mean())
        lo.append(yv.min())
        hi.append(yv.max())
    return np.array(xs), np.array(ys), np.array(lo), np.array(hi)


def label_efficiency(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], baseline: str = BASELINE
) -> dict[str, float | None]:
    """Labels each strategy needs to reach the baseline's final accuracy, over the baseline's.

    `curves` maps strategy -> (labels, mean accuracy). The baseline's own ratio is 1.
    """
    if baseline not in curves:
        raise ValueError(f"the comparison needs the {baseline!r} baseline; got {sorted(curves)}")
    base_labels, base_acc = curves[baseline]
    target = float(np.asarray(base_acc, dtype=np.float64)[-1])
    base_needed = labels_to_reach(base_labels, base_acc, target)
    if base_needed is None or base_needed <= 0:  # pragma: no cover - the last point always reaches
        raise ValueError("the baseline curve never reaches its own final accuracy")
    out: dict[str, float | None] = {}
    for name, (labels, acc) in curves.items():
        needed = labels_to_reach(labels, acc, target)
        out[name] = None if needed is None else needed / base_needed
    return out


def summarize(results: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]], target: float) -> dict[str, Any]:
    """Summary numbers from `results[strategy] = [rows of seed 0, rows of seed 1, ...]`."""
    curves: dict[str, tuple[Sequence[float], Sequence[float]]] = {}
    for name, runs in results.items():
        xs, ys, _, _ = mean_curve(runs, "labels_used", "accuracy")
        curves[name] = (xs.tolist(), ys.tolist())
    ratios = label_efficiency(curves) if BASELINE in curves else {}
    base_final = float(curves[BASELINE][1][-1]) if BASELINE in curves else None
    strategies: dict[str, Any] = {}
    for name, runs in results.items():
        finals = [r[-1] for r in runs]

        def mean_of(values: Sequence[float | None]) -> float | None:
            kept = [v for v in values if v is not None]
            return float(np.mean(kept)) if kept else None

        entry: dict[str, Any] = {
            "seeds": len(runs),
            "final_labels": mean_of([f["labels_used"] for f in finals]),
            "final_accuracy": mean_of([f["accuracy"] for f in finals]),
            "final_accuracy_std": float(np.std([f["accuracy"] for f in finals])),
            "final_macro_f1": mean_of([f["macro_f1"] for f in finals]),
            "final_ece": mean_of([f.get("ece") for f in finals]),
            "final_auto_accept_coverage": mean_of([f["auto_accept_coverage"] for f in finals]),
            "final_auto_accept_accuracy": mean_of([f.get("auto_accept_accuracy") for f in finals]),
            "final_coverage_at_target": mean_of([f.get("coverage_at_target") for f in finals]),
            "label_efficiency_ratio": ratios.get(name),
            # Reviewed tasks a reviewer solves at once: the pre-selected guess, or one of the 3 shown.
            "preselected_share": mean_of([r.get("preselected_share") for run in runs for r in run]),
            "one_click_share": mean_of([r.get("one_click_share") for run in runs for r in run]),
        }
        for checkpoint in CHECKPOINTS:
            entry[f"escalation_rate_after_{checkpoint}"] = mean_of(
                [value_at(r, "corrections_at_routing", "escalation_rate", checkpoint) for r in runs]
            )
            entry[f"test_escalation_rate_after_{checkpoint}"] = mean_of(
                [value_at(r, "corrections", "test_escalation_rate", checkpoint) for r in runs]
            )
        strategies[name] = entry
    ranked = [n for n in strategies if n != BASELINE and strategies[n]["label_efficiency_ratio"] is not None]
    best = min(ranked, key=lambda n: strategies[n]["label_efficiency_ratio"], default=None)
    return {
        "target": target,
        "baseline": BASELINE,
        "baseline_final_accuracy": base_final,
        "best_strategy": best,
        "best_label_efficiency_ratio": None if best is None else strategies[best]["label_efficiency_ratio"],
        "strategies": strategies,
    }


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def summary_markdown(summary: Mapping[str, Any], command: str | None = None) -> str:
    lines = ["# Strategy comparison", ""]
    if command:
        lines += ["Reproduce with:", "", "```bash", command, "```", ""]
    lines += [
        f"Target accuracy {summary['target']}; baseline `{summary['baseline']}` final accuracy "
        f"{_fmt(summary['baseline_final_accuracy'])}; best strategy `{summary['best_strategy']}` "
        f"(label-efficiency ratio {_fmt(summary['best_label_efficiency_ratio'])}).",
        "",
        "| strategy | seeds | labels | accuracy | macro-F1 | ECE | label-eff. ratio | esc. @1k | esc. @3k "
        "| test esc. @1k | test esc. @3k | auto-accept cov. | auto-accept acc. | pre-selected right "
        "| solved in 1 click |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in summary["strategies"].items():
        lines.append(
            f"| {name} | {e['seeds']} | {_fmt(e['final_labels'], 0)} | {_fmt(e['final_accuracy'])} "
            f"± {_fmt(e['final_accuracy_std'])} | {_fmt(e['final_macro_f1'])} | {_fmt(e['final_ece'])} "
            f"| {_fmt(e['label_efficiency_ratio'], 2)} | {_fmt(e['escalation_rate_after_1000'])} "
            f"| {_fmt(e['escalation_rate_after_3000'])} | {_fmt(e['test_escalation_rate_after_1000'])} "
            f"| {_fmt(e['test_escalation_rate_after_3000'])} | {_fmt(e['final_auto_accept_coverage'])} "
            f"| {_fmt(e['final_auto_accept_accuracy'])} | {_fmt(e.get('preselected_share'))} "
            f"| {_fmt(e.get('one_click_share'))} |"
        )
    lines += [
        "",
        "esc. @N: escalation rate of the incoming batch routed by the model trained with the largest "
        "correction count <= N (mean over seeds); test esc.: the same routing policy applied to the "
        "test split after the retrain at <= N corrections. n/a: not reached within the budget. "
        "Pre-selected right / solved in 1 click: share of reviewed tasks whose true category is the "
        "champion's pre-selected guess / among the 3 candidates the task shows (a reviewer who takes "
        "the first correct candidate), over every round.",
        "",
    ]
    return "\n".join(lines)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_outputs(
    results: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
    out_dir: Path,
    *,
    target: float,
    command: str | None = None,
) -> dict[str, Any]:
    """Write the three PNGs, summary.json and summary.md; return the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plt = _pyplot()
    summary = summarize(results, target)
    if command:
        summary["command"] = command

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, runs in results.items():
        xs, ys, lo, hi = mean_curve(runs, "labels_used", "accuracy")
        ax.plot(xs, ys, marker=".", label=name)
        ax.fill_between(xs, lo, hi, alpha=0.15)
    if summary["baseline_final_accuracy"] is not None:
        ax.axhline(summary["baseline_final_accuracy"], color="grey", ls=":", lw=1, label="random final")
    ax.set_xlabel("labels used (seed + corrections)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Learning curves (mean over seeds, band = min..max)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "learning_curves.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, runs in results.items():
        xs, ys, _, _ = mean_curve(runs, "corrections_at_routing", "escalation_rate")
        (line,) = ax.plot(xs, ys, marker=".", label=f"{name} (incoming)")
        xt, yt, _, _ = mean_curve(runs, "corrections", "test_escalation_rate")
        ax.plot(xt, yt, ls="--", color=line.get_color(), alpha=0.6)
    ax.set_xlabel("corrections the routing model was trained with")
    ax.set_ylabel("escalation rate")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Escalation rate at target {target} (dashed: test split)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "escalation_curves.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, runs in results.items():
        curve = runs[0][-1].get("risk_coverage")
        if curve:
            ax.plot(curve["coverage"], curve["risk"], label=name)
    ax.axhline(1 - target, color="grey", ls=":", lw=1, label=f"risk {1 - target:.2f}")
    ax.set_xlabel("coverage (share auto-accepted, most confident first)")
    ax.set_ylabel("selective risk (error rate)")
    ax.set_title("Risk-coverage of the final models (seed 0, test split)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "risk_coverage.png", dpi=110)
    plt.close(fig)

    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out_dir / "summary.md").write_text(summary_markdown(summary, command), encoding="utf-8")
    return summary


def run_comparison(
    data: LabeledDataset,
    embeddings: NDArray[np.float32],
    base: SimulationConfig,
    *,
    strategies: Sequence[str],
    seeds: Sequence[int],
    out_dir: Path,
    extra: Mapping[str, Any] | None = None,
    logger_factory: Callable[[], RunLogger | None] | None = None,
    on_run: Callable[[str, int, bool], None] | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, list[list[dict[str, Any]]]]:
    """Run (or read back) every (strategy, seed); returns rows per strategy, one list per seed."""
    results: dict[str, list[list[dict[str, Any]]]] = {}
    inputs = model_inputs(data, embeddings, base.training.features)  # once, shared by every run
    for name in strategies:
        for seed in seeds:
            config = replace(base, strategy=name, seed=seed)
            logger = logger_factory() if logger_factory is not None else None
            rows, skipped = run_or_skip(
                data,
                embeddings,
                config,
                out_dir / "runs",
                extra=extra,
                logger=logger,
                on_round=on_round,
                inputs=inputs,
            )
            results.setdefault(name, []).append(rows)
            if on_run is not None:
                on_run(name, seed, skipped)
    return results
