"""The fine-tune retrain benchmark: its argument checks, and one tiny run on a synthetic catalog."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import bench_finetune
from learner.data import write_catalog
from learner.synthetic import generate_catalog


def test_bad_arguments_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench_finetune.main(["--sizes", "50"])
    assert exit_info.value.code == 2
    assert "--sizes must be >= 100" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        bench_finetune.main(["--data-dir", str(tmp_path), "--catalogs", "nowhere"])
    assert exit_info.value.code == 2
    assert "no catalog at" in capsys.readouterr().err


@pytest.mark.slow
def test_a_tiny_run_compares_both_retrains_and_writes_json_and_png(tmp_path: Path) -> None:
    write_catalog(
        generate_catalog(260, seed=2, n_categories=4), tmp_path / "data" / "tiny" / "products.jsonl"
    )
    out = tmp_path / "out"
    bench_finetune.main(
        [
            "--catalogs",
            "tiny",
            "--sizes",
            "200",
            "--stream",
            "60",
            "--data-dir",
            str(tmp_path / "data"),
            "--out",
            str(out),
        ]
    )
    payload = json.loads((out / "bench_finetune.json").read_text())
    assert (out / "bench_finetune.png").stat().st_size > 0
    assert payload["command"].startswith("python -m experiments.bench_finetune --catalogs tiny")
    (result,) = payload["results"]
    assert result["catalog"] == "tiny"
    assert result["n_labels"] == 200
    frozen, tuned = result["frozen"], result["finetune"]
    assert frozen["finetune_steps"] == 0
    assert frozen["finetune_s"] == 0.0
    assert tuned["finetune_steps"] == -(-tuned["n_train"] // 32)  # one epoch of batches of 32
    assert tuned["finetune_s"] > 0
    assert frozen["n_stream_scored"] == tuned["n_stream_scored"] >= 60
    # The tuned run re-embeds everything it trains, certifies and scores; the frozen one hits the cache.
    assert result["reembedded_items"] == tuned["n_train"] + tuned["n_audits"] + tuned["n_stream_scored"]
    assert tuned["embedding_s"] > frozen["embedding_s"]
    # Its champion is the frozen run's model, compared on the same audits by the paired gate.
    assert "paired z-test" in tuned["gate_reason"]
    why = result["split_accuracy"]
    assert set(why) == {
        "frozen_hybrid_head",
        "frozen_embedding_head",
        "finetune_own_head",
        "tuned_hybrid_head",
        "tuned_embedding_head",
    }
    assert all(0.0 <= v <= 1.0 for v in why.values())
    assert why["frozen_hybrid_head"] > 0.5  # 4 well-separated synthetic categories
