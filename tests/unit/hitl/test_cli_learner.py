"""`hitl learner train` on the real packaged encoder: frozen (the default) and with a tiny fine-tune."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hitl import cli_learner
from hitl.settings import LearnerSettings, ServingSettings, Settings
from learner.bundle import ModelBundle
from learner.encoder import encoder_from
from learner.settings import FineTuneSettings
from learner.synthetic import generate_catalog, write_catalog
from serving.model import ModelHolder

pytestmark = pytest.mark.slow


def settings(tmp_path: Path, *, finetune: bool) -> Settings:
    learner = LearnerSettings(
        device="cpu",
        max_length=32,
        finetune=FineTuneSettings(enabled=finetune, batch_size=16, learning_rate=1e-4, max_steps=3),
    )
    return Settings(
        state_dir=tmp_path / "state",
        learner=learner,
        serving=ServingSettings(database_url=f"sqlite:///{tmp_path / 'cli.db'}"),
    )


@pytest.mark.parametrize("finetune", [False, True], ids=["frozen", "fine-tuned"])
def test_train_writes_a_bundle_that_serving_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, finetune: bool
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    catalog = tmp_path / "catalog.jsonl"
    write_catalog(generate_catalog(300, seed=1, n_categories=4), catalog)
    conf = settings(tmp_path, finetune=finetune)
    out = tmp_path / "bundle"
    result = CliRunner().invoke(
        cli_learner.learner_app, ["--catalog", str(catalog), "--out", str(out)], obj=conf
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "training_report.json").read_text())
    assert report["test_accuracy"] > 0.5  # 4 separable synthetic categories
    bundle = ModelBundle.load(out, device="cpu")
    base_id = encoder_from(conf.learner).encoder_id
    if finetune:
        assert "fine-tuned in" in result.output
        assert bundle.encoder_ref == "bundle:encoder"
        assert (out / "encoder" / "config.json").is_file()
        assert bundle.metadata["finetune"]["steps"] == 3
        assert bundle.encoder_id != base_id
    else:
        assert bundle.encoder_ref == conf.learner.encoder
        assert bundle.encoder_id == base_id
        assert not (out / "encoder").exists()
    model = ModelHolder(conf).build(out, "1", "bundle")
    _, inputs = model.features(["organic green tea bags"])
    assert model.predict_proba(inputs).shape == (1, len(bundle.labels))


def test_a_failed_fine_tune_leaves_the_bundle_at_out_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    catalog = tmp_path / "catalog.jsonl"
    write_catalog(generate_catalog(300, seed=1, n_categories=4), catalog)
    out = tmp_path / "bundle"
    invoke = CliRunner().invoke
    frozen = invoke(
        cli_learner.learner_app,
        ["--catalog", str(catalog), "--out", str(out)],
        obj=settings(tmp_path, finetune=False),
    )
    assert frozen.exit_code == 0, frozen.output
    manifest = (out / "manifest.json").read_text()

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr("learner.finetune.FineTuneClassifier.fit", out_of_memory)
    kept = invoke(
        cli_learner.learner_app,
        ["--catalog", str(catalog), "--out", str(out)],
        obj=settings(tmp_path, finetune=False),
    )
    assert kept.exit_code == 2
    assert "pass --overwrite" in " ".join(kept.output.split())
    failed = invoke(
        cli_learner.learner_app,
        ["--catalog", str(catalog), "--out", str(out), "--overwrite"],
        obj=settings(tmp_path, finetune=True),
    )
    assert failed.exit_code == 1
    assert "training failed" in failed.output
    assert "out of memory" in failed.output
    assert "Traceback" not in failed.output
    assert (out / "manifest.json").read_text() == manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "catalog.jsonl", "state"]
