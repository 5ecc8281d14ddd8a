"""The MLflow registry round trip on a sqlite tracking URI in tmp_path (never the cwd default)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hitl.settings import MlflowSettings, Settings
from learner.bundle import ModelBundle
from learner.encoder import HFEncoder
from serving import registry
from serving.model import ModelHolder

pytestmark = pytest.mark.slow


def test_log_alias_download_and_serve(
    tmp_path: Path, bundle_dir: Path, embedding_dir: Path, minilm_encoder: HFEncoder
) -> None:
    settings = Settings(
        state_dir=tmp_path,
        mlflow=MlflowSettings(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t"),
    )
    cwd = set(os.listdir())
    assert registry.champion_version(settings) is None
    version = registry.log_bundle(settings, bundle_dir, alias="champion", metrics={"acc": 0.9})
    assert registry.champion_version(settings) == version
    folder = registry.download(settings, version)
    assert ModelBundle.load(folder).labels == ModelBundle.load(bundle_dir).labels
    assert set(os.listdir()) == cwd, "nothing written to the working directory (mlruns, mlflow.db)"

    holder = ModelHolder(
        settings.model_copy(update={"state_dir": tmp_path}), encoder_factory=lambda _r: minilm_encoder
    )
    assert holder.source == "registry"
    assert holder.refresh() is True
    assert holder.require().version == registry.version_label(settings, version)
    second = registry.log_bundle(settings, bundle_dir)  # registered, not promoted
    assert holder.refresh() is False
    registry.set_alias(settings, second)
    assert holder.refresh() is True
    assert holder.require().version.endswith(f":v{second}")
    holder.close()
