"""`hitl score` (issue #16): a whole catalog scored with the served model through the same routing, store
and outbox as /v1/predict; Parquet parts; a re-run resumes and never records a part twice."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from learner.synthetic import generate_catalog, write_catalog
from serving.outbox import OutboxEntry
from serving.store import Prediction, Store
from tests.integration.conftest import HITL, REPO, cli_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N, PART = 30, 8


def _score(
    env: dict[str, str], catalog: Path, out: Path, part: int = PART
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HITL), "score", "--catalog", str(catalog), "--out", str(out), "--part-size", str(part)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_score_records_every_item_writes_parquet_and_resumes(small_bundle_dir: Path, tmp_path: Path) -> None:
    catalog, out, state = tmp_path / "catalog.jsonl", tmp_path / "scored", tmp_path / "state"
    write_catalog(generate_catalog(N, seed=11, n_categories=5), catalog)
    env = cli_env(
        state,
        HITL_SERVING__MODEL_SOURCE="bundle",
        HITL_SERVING__BUNDLE_PATH=str(small_bundle_dir),
    )

    first = _score(env, catalog, out)

    assert first.returncode == 0, first.stdout + first.stderr
    parts = sorted(out.glob("part-*.parquet"))
    assert [p.name for p in parts] == [f"part-0000{i}.parquet" for i in range(4)]
    table = pq.read_table(parts).to_pylist()
    assert len(table) == N
    columns = {"id", "decision", "label", "confidence", "reasons", "model_version", "prediction_id"}
    assert set(table[0]) == columns
    store = Store(f"sqlite:///{state / 'hitl.db'}")
    with store.session() as session:
        stored = dict(session.execute(select(Prediction.id, Prediction.decision)).all())
        pending = session.scalar(select(func.count()).select_from(OutboxEntry))
    assert {row["prediction_id"]: row["decision"] for row in table} == stored, "the same decisions in both"
    assert pending == sum(row["decision"] == "escalated" for row in table), "escalations go to the outbox"

    parts[2].unlink()  # a run that stopped before this part
    again = _score(env, catalog, out)

    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{PART} items scored in 1 parts (3 done before)" in again.stdout
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(Prediction)) == N + PART

    other = _score(env, catalog, out, part=10)
    assert other.returncode == 2
    assert "holds the parts of another run" in other.stderr
    assert json.loads((out / "manifest.json").read_text())["part_size"] == PART
    store.close()


def test_ray_gives_the_same_decisions_as_local(small_bundle_dir: Path, tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.jsonl"
    write_catalog(generate_catalog(N, seed=12, n_categories=5), catalog)
    decisions = {}
    for engine in ("local", "ray"):
        env = cli_env(
            tmp_path / f"state-{engine}",
            HITL_SERVING__MODEL_SOURCE="bundle",
            HITL_SERVING__BUNDLE_PATH=str(small_bundle_dir),
        )
        done = subprocess.run(
            [str(HITL), "score", "--catalog", str(catalog), "--out", str(tmp_path / engine),
             "--part-size", "16", "--engine", engine, "--ray-actors", "2"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        rows = pq.read_table(sorted((tmp_path / engine).glob("part-*.parquet"))).to_pylist()
        decisions[engine] = [(r["id"], r["decision"], r["label"], r["reasons"]) for r in rows]
    assert len(decisions["ray"]) == N
    assert decisions["ray"] == decisions["local"]


def test_an_unknown_engine_is_refused_with_the_valid_names(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.jsonl"
    write_catalog(generate_catalog(5, seed=1, n_categories=2), catalog)
    env = cli_env(tmp_path / "state")
    done = subprocess.run(
        [str(HITL), "score", "--catalog", str(catalog), "--out", str(tmp_path / "o"), "--engine", "spark"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "unknown engine 'spark'; one of: local, ray" in done.stderr


def test_a_run_resumed_after_a_promotion_goes_on_with_the_version_it_started_with(
    small_bundle_dir: Path, tmp_path: Path
) -> None:
    from hitl.settings import MlflowSettings, Settings
    from serving import registry

    catalog, out, state = tmp_path / "catalog.jsonl", tmp_path / "scored", tmp_path / "state"
    write_catalog(generate_catalog(N, seed=12, n_categories=5), catalog)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = Settings(state_dir=state, mlflow=MlflowSettings(tracking_uri=tracking_uri))
    first = registry.log_bundle(settings, small_bundle_dir, alias="champion")
    env = cli_env(state, HITL_SERVING__MODEL_SOURCE="registry", HITL_MLFLOW__TRACKING_URI=tracking_uri)

    assert _score(env, catalog, out).returncode == 0
    sorted(out.glob("part-*.parquet"))[-1].unlink()  # it stopped before its last part ...
    second = registry.log_bundle(settings, small_bundle_dir)
    registry.set_alias(settings, second)  # ... and the loop promoted a new champion meanwhile

    again = _score(env, catalog, out)
    assert again.returncode == 0, again.stdout + again.stderr
    started = registry.version_label(settings, first)
    assert f"resuming with {started}" in again.stdout
    versions = {row["model_version"] for row in pq.read_table(sorted(out.glob("part-*.parquet"))).to_pylist()}
    assert versions == {started}  # every part from the model the run started with


def test_new_items_without_a_category_are_scored_and_a_bad_record_is_named(
    small_bundle_dir: Path, tmp_path: Path
) -> None:
    # Before: `hitl score` refused any item without a category, the very items it is for.
    catalog, out, state = tmp_path / "new.jsonl", tmp_path / "scored", tmp_path / "state"
    records = [
        {"id": f"new-{i}", "title": p.title, "brand": p.brand}
        for i, p in enumerate(generate_catalog(12, seed=13, n_categories=5))
    ]
    env = cli_env(state, HITL_SERVING__MODEL_SOURCE="bundle", HITL_SERVING__BUNDLE_PATH=str(small_bundle_dir))
    catalog.write_text("".join(json.dumps(r) + "\n" for r in [*records, {"id": "x", "title": ""}]))

    refused = _score(env, catalog, out)
    assert refused.returncode == 2
    assert "1 bad record(s): line 13: title" in refused.stderr
    assert not out.exists()

    catalog.write_text("".join(json.dumps(r) + "\n" for r in records))
    done = _score(env, catalog, out)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "12 items scored in 2 parts" in done.stdout
    rows = pq.read_table(sorted(out.glob("part-*.parquet"))).to_pylist()
    assert [r["id"] for r in rows] == [r["id"] for r in records]
