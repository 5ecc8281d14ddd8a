"""The MLflow registry round trip on a sqlite tracking URI in tmp_path (never the cwd default)."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import pytest

from hitl.settings import MlflowSettings, Settings
from learner.bundle import ModelBundle
from learner.encoder import HFEncoder
from serving import registry
from serving.model import ModelHolder

pytestmark = pytest.mark.slow


def test_log_alias_download_and_serve(
    tmp_path: Path,
    small_bundle_dir: Path,
    embedding_dir: Path,
    minilm_encoder: HFEncoder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(
        state_dir=tmp_path,
        mlflow=MlflowSettings(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t"),
    )
    cwd = set(os.listdir())
    assert registry.champion_version(settings) is None
    import mlflow.pyfunc  # its own import-time warnings are not ours

    # A newcomer's terminal stays clean: no type-hint, signature or CloudPickle warnings (issue #14).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with caplog.at_level(logging.WARNING, logger="mlflow"):
            version = registry.log_bundle(settings, small_bundle_dir, alias="champion", metrics={"acc": 0.9})
    assert [str(w.message)[:120] for w in caught] == []
    assert [r.getMessage()[:120] for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert registry.champion_version(settings) == version
    # The logged model predicts through MLflow too, with the signature its type hints give.
    loaded = mlflow.pyfunc.load_model(f"models:/{settings.mlflow.registered_model}/{version}")
    assert loaded.metadata.signature is not None
    texts = ["Stainless steel frying pan 28 cm", "Trail running shoes"]
    out = loaded.predict(texts)
    bundle = ModelBundle.load(small_bundle_dir)
    assert len(out) == 2
    assert all(o.label in bundle.labels and 0.0 <= o.confidence <= 1.0 for o in out)
    folder = registry.download(settings, version)
    assert ModelBundle.load(folder).labels == ModelBundle.load(small_bundle_dir).labels
    assert set(os.listdir()) == cwd, "nothing written to the working directory (mlruns, mlflow.db)"

    holder = ModelHolder(
        settings.model_copy(update={"state_dir": tmp_path}), encoder_factory=lambda _r: minilm_encoder
    )
    assert holder.source == "registry"
    assert holder.refresh() is True
    assert holder.require().version == registry.version_label(settings, version)
    second = registry.log_bundle(settings, small_bundle_dir)  # registered, not promoted
    assert holder.refresh() is False
    registry.set_alias(settings, second)
    assert holder.refresh() is True
    assert holder.require().version.endswith(f":v{second}")
    holder.close()
