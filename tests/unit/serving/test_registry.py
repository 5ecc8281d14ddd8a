"""The MLflow registry round trip on a sqlite tracking URI in tmp_path (never the cwd default)."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from hitl.settings import (
    LabelStudioSettings,
    MlflowSettings,
    RetrainSettings,
    ServingSettings,
    Settings,
)
from learner.bundle import ModelBundle
from learner.encoder import HFEncoder
from serving import registry
from serving.app import create_app
from serving.keys import Role, create_key
from serving.model import ModelHolder, ModelLoadError
from serving.store import Store

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


def test_a_registry_that_cannot_answer_is_not_an_empty_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Empty: nothing registered yet, which callers read as "no champion" (the first model is seeded).
    empty = Settings(
        state_dir=tmp_path, mlflow=MlflowSettings(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    )
    assert registry.champion_version(empty) is None
    assert registry.registered_versions(empty) == ([], {})
    # Unreachable: MLflow could not answer. Read as "no champion", a retrain would skip the gate and
    # promote its challenger unchecked; it must fail instead, and not quote the URI's credentials.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    down = Settings(
        state_dir=tmp_path, mlflow=MlflowSettings(tracking_uri="http://ops:s3cret-pw@127.0.0.1:9")
    )
    with pytest.raises(registry.RegistryUnavailableError) as caught:
        registry.champion_version(down)
    assert "s3cret-pw" not in str(caught.value)
    with pytest.raises(registry.RegistryUnavailableError):
        registry.registered_versions(down)


def test_the_models_page_says_the_registry_is_down_instead_of_listing_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    settings = Settings(
        state_dir=tmp_path,
        mlflow=MlflowSettings(tracking_uri="http://127.0.0.1:9"),
        labelstudio=LabelStudioSettings(sync_interval_s=0),
        serving=ServingSettings(model_source="none", outbox_enabled=False, model_poll_interval_s=0),
        retrain=RetrainSettings(enabled=False),
    )
    store = Store(settings.database_url)
    with TestClient(create_app(settings, store=store)) as client:
        _, key = create_key(store, "eng", Role.ML_ENGINEER)
        answer = client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    store.close()
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "10"
    assert "registry" in answer.json()["detail"]


def test_a_replica_restarted_while_the_registry_is_down_serves_the_last_champions_copy(
    tmp_path: Path,
    small_bundle_dir: Path,
    minilm_encoder: HFEncoder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(
        state_dir=tmp_path,
        mlflow=MlflowSettings(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t"),
    )
    version = registry.log_bundle(settings, small_bundle_dir, alias="champion")
    first = ModelHolder(settings, encoder_factory=lambda _r: minilm_encoder)
    assert first.refresh() is True  # served from the registry: its copy and version stay on disk
    first.close()

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    down = settings.model_copy(update={"mlflow": MlflowSettings(tracking_uri="http://127.0.0.1:9")})
    restarted = ModelHolder(down, encoder_factory=lambda _r: minilm_encoder)
    assert restarted.refresh() is True
    served = restarted.require()
    assert served.version == registry.version_label(settings, version)
    assert served.source.startswith("registry-copy:")
    assert restarted.last_error is not None
    assert "unreachable" in restarted.last_error
    assert restarted.refresh() is False  # still down: it keeps serving, nothing to swap
    restarted.close()

    # A machine that never served a champion has no copy: nothing to serve, said plainly.
    elsewhere = down.model_copy(update={"state_dir": tmp_path / "other"})
    with pytest.raises(ModelLoadError, match="registry did not answer"):
        ModelHolder(elsewhere, encoder_factory=lambda _r: minilm_encoder).refresh()


def test_downloads_beyond_the_newest_the_champion_and_the_last_served_are_deleted(tmp_path: Path) -> None:
    # A fine-tuned version carries its encoder (~90 MB): downloads of old champions must not pile up.
    settings = Settings(state_dir=tmp_path)
    for version in range(1, 8):
        folder = registry.download_dir(settings) / str(version)
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text("{}")
    registry.remember_champion(settings, "2")  # a copy to serve while MLflow is down
    assert registry.prune_downloads(settings, keep=["1"], newest=3) == ["3", "4"]
    left = sorted(int(p.name) for p in registry.download_dir(settings).iterdir() if p.name.isdigit())
    assert left == [1, 2, 5, 6, 7]
    assert registry.last_champion(settings) == ("2", registry.download_dir(settings) / "2")
    assert registry.prune_downloads(settings, keep=["1"], newest=3) == []
    assert registry.prune_downloads(Settings(state_dir=tmp_path / "empty"), keep=[]) == []
