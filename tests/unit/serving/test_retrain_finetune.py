"""Retrains with `learner.finetune.enabled`, in a tiny configuration on CPU: the real MiniLM tuned for a
few steps, its bundle (tuned encoder inside) registered in a real (sqlite) MLflow and served."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from hitl.settings import Settings
from learner.bundle import ModelBundle
from learner.encoder import HFEncoder, encoder_from
from learner.settings import FineTuneSettings
from learner.synthetic import generate_catalog
from serving import registry, tracking
from serving.app import create_app
from serving.keys import Role, create_key
from serving.model import ModelHolder
from serving.retrain import RetrainWorker, add_seed_labels
from serving.retrain.job import staging_dir
from serving.retrain.tables import RunRecord
from serving.store import Store
from tests.unit.serving.retrain_support import retrain_settings

pytestmark = pytest.mark.slow

STEPS = 6


def tiny(settings: Settings, *, enabled: bool) -> Settings:
    """The packaged MiniLM with short inputs; when `enabled`, a fine-tune of `STEPS` steps."""
    finetune = FineTuneSettings(enabled=enabled, batch_size=16, learning_rate=1e-4, max_steps=STEPS)
    learner = settings.learner.model_copy(update={"max_length": 32, "finetune": finetune})
    return settings.model_copy(update={"learner": learner})


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Store]]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        settings = retrain_settings(tmp_path_factory.mktemp("retrain-finetune"))
        store = Store(settings.database_url)
        store.create_all()
        add_seed_labels(store, generate_catalog(300, seed=5, n_categories=4), level=2)
        yield settings, store
        store.close()


def run_once(settings: Settings, store: Store) -> RunRecord:
    worker = RetrainWorker(settings, store, auto=False)  # the configured encoder, as in production
    try:
        run_id = worker.trigger("test").run_id
        assert worker.run_next()
        record = worker.get(run_id)
    finally:
        worker.stop()
    assert record is not None
    return record


def assert_nothing_staged(settings: Settings) -> None:
    """No run left its staged bundle (and tuned encoder, ~90 MB) behind."""
    staged = staging_dir(settings)
    assert not staged.exists() or not any(staged.iterdir()), sorted(p.name for p in staged.iterdir())


@pytest.fixture(scope="module")
def tuned_champion(env: tuple[Settings, Store]) -> RunRecord:
    settings, store = env
    return run_once(tiny(settings, enabled=True), store)


def test_a_fine_tuned_model_is_versioned_with_its_encoder(
    env: tuple[Settings, Store], tuned_champion: RunRecord
) -> None:
    settings, _ = env
    record = tuned_champion
    assert record.status == "promoted", record.error
    bundle_dir = registry.download(settings, record.version or "")
    bundle = ModelBundle.load(bundle_dir, device="cpu")
    assert bundle.encoder_ref == "bundle:encoder"
    assert (bundle_dir / "encoder" / "config.json").is_file()
    facts = bundle.metadata["finetune"]
    assert facts["steps"] == STEPS
    assert facts["encoder_id"] == bundle.encoder_id != facts["base_encoder_id"]
    # The encoder in the bundle is the one the head was trained on, byte for byte.
    reloaded = encoder_from(tiny(settings, enabled=True).learner, bundle.resolve_encoder_ref())
    assert reloaded.encoder_id == bundle.encoder_id
    assert encoder_from(tiny(settings, enabled=True).learner).encoder_id == facts["base_encoder_id"]

    client = tracking.client(settings)
    run = client.get_run(record.mlflow_run_id or "")
    assert run.data.params["mode"] == "fine-tuned"
    assert run.data.params["finetune.max_steps"] == str(STEPS)
    assert run.data.metrics["finetune_steps"] == STEPS
    assert run.data.metrics["finetune_time_s"] > 0
    version = client.get_model_version(settings.mlflow.registered_model, record.version or "")
    assert version.tags["hitl.encoder_id"] == bundle.encoder_id
    assert "fine-tuned from" in version.tags["hitl.encoder"]
    assert_nothing_staged(settings)


def test_serving_loads_the_tuned_encoder_from_the_bundle(
    env: tuple[Settings, Store], tuned_champion: RunRecord
) -> None:
    settings, _ = env
    serving = tiny(settings, enabled=False)  # serving needs no fine-tune setting to serve one
    version = tuned_champion.version or ""
    holder = ModelHolder(serving)
    model = holder.build(registry.download(serving, version), version, "registry")
    texts = ["organic green tea bags", "stainless steel frying pan"]
    embeddings, inputs = model.features(texts)
    tuned = HFEncoder(model.bundle.resolve_encoder_ref(), device="cpu", max_length=32)
    np.testing.assert_allclose(embeddings, tuned.encode(texts), atol=1e-5)
    proba = model.predict_proba(inputs)
    assert proba.shape == (2, len(model.labels))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)


@pytest.mark.parametrize("enabled", [True, False], ids=["tuned-again", "frozen"])
def test_the_next_challenger_is_gated_against_the_tuned_champion(
    env: tuple[Settings, Store], tuned_champion: RunRecord, enabled: bool
) -> None:
    # The champion's encoder differs from any later run's (a new fine-tune, or the frozen base): it
    # is scored on its own encoder from its bundle, so the paired gate decides, not "promote manually".
    settings, store = env
    assert tuned_champion.status == "promoted"
    champion = registry.champion_version(settings)
    record = run_once(tiny(settings, enabled=enabled), store)
    assert record.status in {"promoted", "rejected"}, record.error
    assert "paired z-test" in (record.gate_reason or ""), record.gate_reason
    assert "champion_accuracy" in record.metrics
    mode = tracking.client(settings).get_run(record.mlflow_run_id or "").data.params["mode"]
    assert mode == ("fine-tuned" if enabled else "frozen-encoder")
    if record.status == "rejected":
        assert registry.champion_version(settings) == champion


def test_a_worker_stopping_ends_the_fine_tune_at_its_next_step_and_cleans_up(
    env: tuple[Settings, Store], tuned_champion: RunRecord
) -> None:
    # A CPU fine-tune takes minutes: shutting down must not wait for it, nor kill it mid-run.
    settings, store = env
    champion = registry.champion_version(settings)
    worker = RetrainWorker(tiny(settings, enabled=True), store, auto=False)
    run_id = worker.trigger("test").run_id
    worker.stop()  # as `hitl down` does, while the run is (about to be) running
    assert worker.run_next()
    record = worker.get(run_id)
    assert record is not None
    assert record.status == "failed"
    assert f"stopped at fine-tuning step 1/{STEPS}" in (record.error or "")
    assert registry.champion_version(settings) == champion
    assert_nothing_staged(settings)


def test_the_models_page_names_each_versions_encoder(
    env: tuple[Settings, Store], tuned_champion: RunRecord
) -> None:
    settings, store = env
    app_settings = settings.model_copy(
        update={
            "labelstudio": settings.labelstudio.model_copy(update={"sync_interval_s": 0}),
            "serving": settings.serving.model_copy(update={"model_source": "none", "outbox_enabled": False}),
            "retrain": settings.retrain.model_copy(update={"enabled": False}),
        }
    )
    with TestClient(create_app(app_settings, store=store)) as client:
        _, key = create_key(store, "eng-encoders", Role.ML_ENGINEER)
        answer = client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    versions = {v["version"]: v for v in answer.json()["versions"]}
    tuned = versions[tuned_champion.version or ""]
    bundle = ModelBundle.load(registry.download(settings, tuned_champion.version or ""), device="cpu")
    assert tuned["encoder_id"] == bundle.encoder_id
    assert tuned["encoder"].startswith("fine-tuned from")
