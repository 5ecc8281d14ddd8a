"""MLflow logging helpers that need no server: metric cleaning, version names, the PNG plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from hitl.settings import MlflowSettings, Settings
from serving import tracking
from serving.escalation import EscalationWindow
from serving.tracking import (
    confusion_matrix_png,
    finite_metrics,
    registered_version_of,
    reliability_png,
    risk_coverage_png,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_finite_metrics_drops_what_mlflow_cannot_chart() -> None:
    cleaned = finite_metrics(
        {
            "a": 1,
            "b": 0.5,
            "c": math.nan,
            "d": None,
            "e": math.inf,
            "f": True,
            "g": np.float32(0.25),
            "h": "x",
        }
    )
    assert cleaned == {"a": 1.0, "b": 0.5, "g": 0.25}


def test_registered_version_of(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    name = settings.mlflow.registered_model
    assert registered_version_of(settings, f"{name}:v12") == "12"
    assert registered_version_of(settings, "local:bundle@abc") is None


def test_escalation_window_metrics() -> None:
    window = EscalationWindow("m:v1", 0.0, 3600, predicted=8, escalated=2, by_reason={"spot_check": 1})
    assert window.rate == 0.25
    assert window.metrics() == {
        "escalation_rate": 0.25,
        "predicted_count": 8.0,
        "escalated_count": 2.0,
        "escalation_rate_spot_check": 0.125,
    }
    assert EscalationWindow("m:v1", 0.0, 60, 0, 0, {}).rate == 0.0


Evaluation = tuple[NDArray[np.float64], NDArray[np.int64]]  # (probabilities, labels)


@pytest.fixture
def evaluation() -> Evaluation:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((60, 4)) * 3
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.where(rng.random(60) < 0.7, proba.argmax(axis=1), rng.integers(0, 4, 60)).astype(np.int64)
    return proba, y


def test_plots_are_png_files(tmp_path: Path, evaluation: Evaluation) -> None:
    proba, y = evaluation
    paths = [
        confusion_matrix_png(
            y, proba.argmax(axis=1), ["A > a", "A > b", "B > c", "B > d"], tmp_path / "cm.png"
        ),
        reliability_png(proba, y, tmp_path / "rel.png"),
        risk_coverage_png(proba, y, 0.9, tmp_path / "rc.png"),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_MAGIC
        assert path.stat().st_size > 2000


def test_mlflow_http_calls_are_bounded_by_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue #12.4: MLflow's defaults (120 s timeout, 7 retries with backoff) held a request ~4 minutes.
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    settings = Settings(state_dir=tmp_path, mlflow={"request_timeout_s": 7, "request_retries": 1})
    tracking.client(settings)
    # MLflow's own parsing of the variables, untyped in MLflow: what its HTTP client will use.
    assert MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 7  # type: ignore[no-untyped-call]
    assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 1  # type: ignore[no-untyped-call]


@pytest.mark.parametrize(
    ("uri", "local"),
    [
        ("sqlite:///state/mlflow.db", True),
        ("file:///state/mlruns", True),
        ("http://127.0.0.1:5000", True),  # `hitl up`'s own server
        ("http://localhost:5000", True),
        ("https://mlflow.corp.example", False),
        ("http://10.0.0.7:5000", False),
    ],
)
def test_experiments_keep_artifacts_on_this_machine_only_when_tracking_is_local(
    tmp_path: Path, uri: str, local: bool
) -> None:
    settings = Settings(state_dir=tmp_path, mlflow=MlflowSettings(tracking_uri=uri))
    location = tracking.artifact_location(settings)
    if local:
        assert location == (tmp_path / "mlartifacts").resolve().as_uri()
    else:
        assert location is None  # the server stores (and serves) them for every replica
