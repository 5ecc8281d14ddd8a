"""MLflow run logging for the retraining loop: params, metrics, PNG artifacts, the model, escalation rates.

Every call goes through an explicit `MlflowClient` built from settings (never MLflow's cwd default), so
nothing here touches the fluent API's global "active run" except `log_model_version`, which must (MLflow
logs a model into the active run) and does so inside the calling thread only. ``import mlflow`` costs
~2 s, so it happens inside functions.

Runs are tagged ``hitl.kind`` = ``retrain`` (one per training attempt; a crash ends it ``FAILED``).
Escalation rates go into the training run of the version that made the predictions, one metric point
per time window (``step`` = window index since the epoch, ``timestamp`` = window start), so the MLflow UI
charts them per version.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from numpy.typing import NDArray

from learner.thresholds import LEGACY_ACCEPTANCE_SCORE
from serving.escalation import EscalationWindow
from serving.settings import AppSettings, is_loopback

KIND_TAG = "hitl.kind"
TRIGGER_TAG = "hitl.trigger"
ERROR_TAG = "hitl.error"
MAX_PARAM_CHARS = 500


def client(settings: AppSettings) -> Any:
    """The one way to an MLflow client: tracking and registry at the configured URI, HTTP calls
    bounded by `MlflowSettings.request_timeout_s` / `request_retries` (MLflow reads these from the
    environment at each call; an explicitly set variable wins)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(settings.mlflow.request_timeout_s))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(settings.mlflow.request_retries))
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def artifact_location(settings: AppSettings) -> str | None:
    """Where a new experiment keeps its artifacts: under the state dir when tracking is on this machine
    (a SQLite or file store, or a server on loopback, as `hitl up` runs); None for a remote server,
    which then stores them itself (a ``file://`` path of the machine that created the experiment would
    leave every other replica unable to download a champion)."""
    uri = urlparse(settings.tracking_uri)
    if uri.scheme in ("http", "https") and not is_loopback(uri.hostname or ""):
        return None
    artifacts = (settings.state_dir / "mlartifacts").resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    return artifacts.as_uri()


def experiment_id(settings: AppSettings) -> str:
    """The configured experiment, created when missing (artifacts: `artifact_location`)."""
    mlflow_client = client(settings)
    found = mlflow_client.get_experiment_by_name(settings.mlflow.experiment)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(
            mlflow_client.create_experiment(
                settings.mlflow.experiment, artifact_location=artifact_location(settings)
            )
        )
    except Exception:  # created concurrently by another process
        again = mlflow_client.get_experiment_by_name(settings.mlflow.experiment)
        if again is None:
            raise
        return str(again.experiment_id)


def start_run(settings: AppSettings, *, run_name: str, trigger: str, params: Mapping[str, Any]) -> str:
    """Open a training run (status RUNNING) with its params; returns the run id."""
    mlflow_client = client(settings)
    run = mlflow_client.create_run(
        experiment_id(settings), run_name=run_name, tags={KIND_TAG: "retrain", TRIGGER_TAG: trigger[:250]}
    )
    run_id = str(run.info.run_id)
    try:
        log_params(settings, run_id, params)
    except Exception:  # a run nobody will finish must not stay RUNNING
        mlflow_client.set_terminated(run_id, status="FAILED")
        raise
    return run_id


def log_params(settings: AppSettings, run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    if params:
        client(settings).log_batch(
            run_id, params=[Param(str(k), str(v)[:MAX_PARAM_CHARS]) for k, v in params.items()]
        )


def finite_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Numbers only, NaN/inf and None dropped (MLflow refuses or mis-plots them)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
            continue
        if math.isfinite(float(value)):
            out[str(key)] = float(value)
    return out


def log_metrics(
    settings: AppSettings,
    run_id: str,
    metrics: Mapping[str, Any],
    *,
    step: int = 0,
    timestamp_ms: int | None = None,
) -> None:
    from mlflow.entities import Metric

    stamp = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
    values = finite_metrics(metrics)
    if values:
        client(settings).log_batch(
            run_id, metrics=[Metric(k, v, stamp, step) for k, v in sorted(values.items())]
        )


def end_run(settings: AppSettings, run_id: str, *, failed: bool = False, error: str | None = None) -> None:
    """Terminate the run FINISHED, or FAILED with a one-line error tag (no traceback, no secrets)."""
    mlflow_client = client(settings)
    if error:
        mlflow_client.set_tag(run_id, ERROR_TAG, error[:MAX_PARAM_CHARS])
    mlflow_client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def ensure_registered_model(mlflow_client: Any, name: str) -> None:
    """Create the registered model `name` unless it exists (also when another process creates it now)."""
    try:
        mlflow_client.get_registered_model(name)
    except Exception:  # RESOURCE_DOES_NOT_EXIST
        try:
            mlflow_client.create_registered_model(name)
        except Exception:  # created concurrently
            mlflow_client.get_registered_model(name)


def log_model_version(
    settings: AppSettings, run_id: str, bundle_dir: Path, *, tags: Mapping[str, str]
) -> str:
    """Log `bundle_dir` as a pyfunc model (explicit pip requirements) into `run_id` and register it.

    Returns the new version of `mlflow.registered_model` (no alias is moved here).
    """
    import mlflow

    from serving.registry import log_pyfunc, register

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    with mlflow.start_run(run_id=run_id, nested=False) as run:
        info = log_pyfunc(bundle_dir)
        del run  # leaving the block ends the run FINISHED; it is re-opened below
        version = register(settings, info, run_id, tags=tags)
    client(settings).update_run(run_id, status="RUNNING")  # still open: gate and artifacts follow
    return version


def set_version_tags(settings: AppSettings, version: str, tags: Mapping[str, str]) -> None:
    mlflow_client = client(settings)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(settings.mlflow.registered_model, version, key, value[:5000])


# ---------------------------------------------------------------------------------------------- figures


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_matrix_png(
    y: NDArray[np.int64], pred: NDArray[np.int64], labels: Sequence[str], path: Path
) -> Path:
    """Row-normalised confusion matrix (true rows, predicted columns)."""
    plt = _pyplot()
    n = len(labels)
    matrix = np.zeros((n, n), dtype=np.float64)
    np.add.at(matrix, (y, pred), 1.0)
    rows = matrix.sum(axis=1, keepdims=True)
    norm = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    size = max(4.0, 0.35 * n + 2.0)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    short = [label.split(" > ")[-1][:24] for label in labels]
    ax.set_xticks(range(n), short, rotation=90, fontsize=7)
    ax.set_yticks(range(n), short, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix (holdout, n={len(y)})")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def reliability_png(proba: NDArray[np.float64], y: NDArray[np.int64], path: Path, n_bins: int = 10) -> Path:
    from learner.calibration import reliability_curve

    plt = _pyplot()
    curve = reliability_curve(proba, y, n_bins=n_bins)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    seen = curve.count > 0
    centers = (curve.bin_edges[:-1] + curve.bin_edges[1:]) / 2
    ax.bar(centers[seen], curve.accuracy[seen], width=1.0 / n_bins, alpha=0.6, edgecolor="black")
    ax.plot(curve.mean_confidence[seen], curve.accuracy[seen], marker="o", color="C1")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability (holdout)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def risk_coverage_png(
    proba: NDArray[np.float64],
    y: NDArray[np.int64],
    target: float,
    path: Path,
    score: str = LEGACY_ACCEPTANCE_SCORE,
) -> Path:
    from learner.evaluation import risk_coverage_curve

    plt = _pyplot()
    coverage, risk = risk_coverage_curve(proba, y, score)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.step(coverage, risk, where="post")
    ax.axhline(1.0 - target, linestyle="--", color="C3", linewidth=1, label=f"risk at target {target:.2f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, max(0.05, float(risk.max()) * 1.1))
    ax.set_xlabel("coverage")
    ax.set_ylabel("selective risk")
    ax.set_title("risk-coverage (holdout)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def log_evaluation_figures(
    settings: AppSettings,
    run_id: str,
    proba: NDArray[np.float64],
    y: NDArray[np.int64],
    labels: Sequence[str],
    target: float,
    score: str = LEGACY_ACCEPTANCE_SCORE,
) -> list[str]:
    """Confusion matrix, reliability diagram and risk-coverage curve (of the acceptance confidence
    `score`) as PNG artifacts of `run_id`."""
    if len(y) == 0:
        return []
    mlflow_client = client(settings)
    with tempfile.TemporaryDirectory(prefix="hitl-plots-") as tmp:
        folder = Path(tmp)
        paths = [
            confusion_matrix_png(y, np.argmax(proba, axis=1), labels, folder / "confusion_matrix.png"),
            reliability_png(proba, y, folder / "reliability_diagram.png"),
            risk_coverage_png(proba, y, target, folder / "risk_coverage.png", score),
        ]
        for path in paths:
            mlflow_client.log_artifact(run_id, str(path), artifact_path="plots")
    return [f"plots/{p.name}" for p in paths]


# -------------------------------------------------------------------------------------- escalation rate


def registered_version_of(settings: AppSettings, model_version: str) -> str | None:
    """``<registered model>:v<N>`` -> ``N``; None for other names (local bundles)."""
    prefix = f"{settings.mlflow.registered_model}:v"
    return model_version[len(prefix) :] if model_version.startswith(prefix) else None


def log_escalation_windows(settings: AppSettings, windows: Sequence[EscalationWindow]) -> int:
    """Log each window's rates into the training run of its (registered) version; returns points logged."""
    mlflow_client = client(settings)
    run_ids: dict[str, str | None] = {}
    logged = 0
    for window in windows:
        version = registered_version_of(settings, window.model_version)
        if version is None:
            continue
        if version not in run_ids:
            try:
                found = mlflow_client.get_model_version(settings.mlflow.registered_model, version)
                run_ids[version] = str(found.run_id) if found.run_id else None
            except Exception:
                run_ids[version] = None
        run_id = run_ids[version]
        if run_id is None:
            continue
        log_metrics(
            settings,
            run_id,
            window.metrics(),
            step=int(window.window_start // window.window_s),
            timestamp_ms=int(window.window_start * 1000),
        )
        logged += 1
    return logged
