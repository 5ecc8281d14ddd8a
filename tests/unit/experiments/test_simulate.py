"""The simulation loop on a tiny synthetic catalog with a fast hashing encoder."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import sparse

from experiments.simulate import (
    DONE,
    SimulationConfig,
    arrival_clustering,
    code_fingerprint,
    looks_sorted,
    model_inputs,
    read_rounds,
    run_file,
    run_finished,
    run_or_skip,
    simulate_run,
    sources_digest,
    split_stream,
    value_at,
)
from learner.data import LabeledDataset
from learner.features import FeatureSpec
from learner.loop import AuditPolicy
from learner.training import TrainingConfig
from tests.unit.experiments.support import tiny_dataset

Tiny = tuple[LabeledDataset, NDArray[np.float32]]

FAST = TrainingConfig(epochs=30, device="cpu")


@pytest.fixture(scope="module")
def tiny() -> Tiny:
    return tiny_dataset()


def _config(strategy: str = "margin", **kw: object) -> SimulationConfig:
    base = SimulationConfig(strategy=strategy, seed_size=60, batch=25, rounds=3, training=FAST)
    return replace(base, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("strategy", ["random", "margin", "batch_diverse"])
def test_labels_grow_by_batch_and_rates_are_shares(tiny: Tiny, strategy: str) -> None:
    data, x = tiny
    rows = list(simulate_run(data, x, _config(strategy)))
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert [r["labels_used"] for r in rows] == [60, 85, 110, 135]
    assert [r["corrections"] for r in rows] == [0, 25, 50, 75]
    assert [r.get("corrections_at_routing") for r in rows[1:]] == [0, 25, 50]
    for row in rows[1:]:
        assert 0.0 <= row["escalation_rate"] <= 1.0
        assert 0.0 <= row["below_threshold_rate"] <= 1.0
        assert 0.0 <= row["test_escalation_rate"] <= 1.0
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["incoming"] > 0
        # The reviewer who takes the first correct candidate: the 3 shown include the pre-selected one.
        assert 0.0 <= row["preselected_share"] <= row["one_click_share"] <= 1.0


def test_escalation_covers_every_below_threshold_item(tiny: Tiny) -> None:
    # Routing escalates whatever the thresholds reject, plus policy reasons: never less.
    data, x = tiny
    for row in list(simulate_run(data, x, _config("entropy")))[1:]:
        assert row["escalation_rate"] >= row["below_threshold_rate"] - 1e-12


def test_the_test_split_is_grouped_and_never_in_the_stream(tiny: Tiny) -> None:
    data, _ = tiny
    stream, test = split_stream(data, test_fraction=0.2, seed=0)
    assert not set(stream) & set(test)
    assert list(stream) == sorted(stream)  # arrival order
    assert not {data.groups[i] for i in stream} & {data.groups[i] for i in test}


def test_reviewer_noise_changes_what_is_learned(tiny: Tiny) -> None:
    data, x = tiny
    clean = list(simulate_run(data, x, _config("random")))
    noisy = list(simulate_run(data, x, _config("random", reviewer_noise=0.9)))
    assert noisy[-1]["accuracy"] < clean[-1]["accuracy"]


def test_finished_runs_are_skipped_and_unfinished_ones_redone(tiny: Tiny, tmp_path: Path) -> None:
    data, x = tiny
    config = _config("least_confidence")
    rows, skipped = run_or_skip(data, x, config, tmp_path)
    path = run_file(tmp_path, "least_confidence", 0)
    assert not skipped
    assert run_finished(path, config)
    assert json.loads(path.read_text().splitlines()[-1]) == DONE
    mtime = path.stat().st_mtime_ns

    again, skipped = run_or_skip(data, x, config, tmp_path)
    assert skipped
    assert path.stat().st_mtime_ns == mtime
    assert again == read_rounds(path) == json.loads(json.dumps(rows))

    # Another configuration is not "finished", and a truncated file is redone.
    assert not run_finished(path, replace(config, batch=10))
    path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
    assert not run_finished(path, config)
    _, skipped = run_or_skip(data, x, config, tmp_path)
    assert not skipped
    assert run_finished(path, config)


def test_a_run_written_by_other_code_is_redone(tiny: Tiny, tmp_path: Path) -> None:
    data, x = tiny
    config = _config("least_confidence")
    run_or_skip(data, x, config, tmp_path)
    path = run_file(tmp_path, "least_confidence", 0)
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["code"] == code_fingerprint()

    # Same configuration, other code (a changed grid or rule leaves the configuration as it was).
    path.write_text("\n".join([json.dumps({**header, "code": "0" * 16}), *lines[1:]]) + "\n")
    assert not run_finished(path, config)
    # A file from before the fingerprint existed is not trusted either.
    path.write_text("\n".join([json.dumps({"config": header["config"]}), *lines[1:]]) + "\n")
    assert not run_finished(path, config)
    _, skipped = run_or_skip(data, x, config, tmp_path)
    assert not skipped
    assert run_finished(path, config)


def test_sources_digest_changes_with_the_code_it_covers_only(tmp_path: Path) -> None:
    (tmp_path / "learner").mkdir()
    (tmp_path / "learner" / "rule.py").write_text("GRID = 0.005\n")
    (tmp_path / "loop.py").write_text("ROUNDS = 3\n")
    (tmp_path / "plots.py").write_text("COLOR = 'red'\n")
    entries = ("learner", "loop.py")
    before = sources_digest(tmp_path, entries)
    assert len(before) == 16

    (tmp_path / "plots.py").write_text("COLOR = 'blue'\n")
    assert sources_digest(tmp_path, entries) == before  # not covered: runs stay valid
    (tmp_path / "learner" / "rule.py").write_text("GRID = 0.001\n")
    changed = sources_digest(tmp_path, entries)
    assert changed != before
    (tmp_path / "learner" / "extra.py").write_text("")
    assert sources_digest(tmp_path, entries) != changed  # a new module counts


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="random"):
        SimulationConfig(strategy="nope")
    with pytest.raises(ValueError, match="batch"):
        SimulationConfig(strategy="margin", batch=0)
    with pytest.raises(ValueError, match="reviewer_noise"):
        SimulationConfig(strategy="margin", reviewer_noise=1.5)


def test_value_at_takes_the_last_point_not_beyond() -> None:
    rows: list[dict[str, float | None]] = [
        {"c": 0, "e": 1.0},
        {"c": 200, "e": 0.8},
        {"c": 400, "e": 0.5},
        {"c": 600, "e": None},
    ]
    assert value_at(rows, "c", "e", 300) == 0.8
    assert value_at(rows, "c", "e", 400) == 0.5
    assert value_at(rows, "c", "e", 1000) == 0.5  # None rows are skipped
    assert value_at(rows, "c", "e", -1) is None


def test_audits_are_drawn_at_routing_reviewed_first_and_counted(tiny: Tiny) -> None:
    data, x = tiny
    rows = list(simulate_run(data, x, _config("margin", audit_share=0.4)))
    audited = [r["audited"] for r in rows[1:]]
    # ~0.4 * 25 = 10 audits expected per round (Poisson draws with logged probabilities).
    assert 3 <= sum(audited) <= 40
    assert all(0 <= a <= 25 for a in audited)
    # The budget is unchanged: audits first, the strategy picks the rest.
    assert [r["labels_used"] for r in rows] == [60, 85, 110, 135]
    # Every audit is kept for certification (seed audits included in round 0's count).
    assert [r["audits"] for r in rows[1:]] == [rows[0]["audits"] + sum(audited[: k + 1]) for k in range(3)]
    assert 0.0 < rows[0]["audit_rate"] <= 1.0
    more = list(simulate_run(data, x, _config("margin", audit_share=0.8)))
    assert sum(r["audited"] for r in more[1:]) > sum(audited)


def test_with_a_window_only_the_most_recent_audits_certify(tiny: Tiny) -> None:
    data, x = tiny
    config = _config("margin", audit_share=0.4)
    rows = list(simulate_run(data, x, replace(config, audit=replace(config.audit, certify_window=8))))
    # Every audit drawn is still counted; only the 8 most recent certify, the older ones train.
    assert rows[-1]["audits"] > 8
    assert [r["certifying_audits"] for r in rows] == [min(r["audits"], 8) for r in rows]
    whole = list(simulate_run(data, x, config))
    assert [r["certifying_audits"] for r in whole] == [r["audits"] for r in whole]
    # Retired audits train: the same labels, so a different model once the window is full.
    assert rows[-1]["accuracy"] != whole[-1]["accuracy"] or rows[-1]["threshold"] != whole[-1]["threshold"]


def test_hybrid_features_run_and_are_part_of_the_run_identity(tiny: Tiny, tmp_path: Path) -> None:
    data, x = tiny
    hybrid = replace(FAST, features=FeatureSpec(kind="hybrid", ngram_dims=256, ngram_weight=2.0))
    config = _config("random", training=hybrid)
    rows, _ = run_or_skip(data, x, config, tmp_path)
    assert 0.0 <= rows[-1]["accuracy"] <= 1.0
    path = run_file(tmp_path, "random", 0)
    header = json.loads(path.read_text().splitlines()[0])["config"]
    assert header["training"]["features"]["kind"] == "hybrid"
    assert header["audit_share"] == 0.4
    assert run_finished(path, config)
    assert not run_finished(path, replace(config, training=FAST))  # embedding-only is another run
    assert not run_finished(path, replace(config, audit_share=0.3))
    assert not run_finished(path, replace(config, training=replace(hybrid, guarantee="expected")))


def test_the_simulation_builds_head_inputs_as_a_retrain_does(tiny: Tiny) -> None:
    data, x = tiny
    spec = FeatureSpec(kind="hybrid", ngram_dims=256, ngram_weight=2.0)
    inputs = model_inputs(data, x, spec)
    assert sparse.issparse(inputs.x)  # the retrain job's CSR inputs, fitted by the same code path
    dense = spec.model_inputs(x, [str(t) for t in data.texts])
    np.testing.assert_allclose(sparse.csr_matrix(inputs.x).toarray(), dense, rtol=1e-6, atol=1e-7)
    embedding_only = model_inputs(data, x, FeatureSpec(kind="embedding")).x
    assert isinstance(embedding_only, np.ndarray)
    np.testing.assert_array_equal(embedding_only, x)


def test_bad_audit_share_is_refused() -> None:
    for share in (0.0, 1.0, -0.2):
        with pytest.raises(ValueError, match="audit_share"):
            SimulationConfig(strategy="margin", audit_share=share)
    with pytest.raises(ValueError, match="audit_share"):
        SimulationConfig(strategy="margin", batch=1, audit_share=0.2)  # rounds to 0 items


def test_a_file_order_grouped_by_label_is_told_from_a_random_one() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(20), 50)  # a catalog sorted by category
    adjacent, chance = arrival_clustering(labels)
    assert adjacent == pytest.approx(980 / 999)
    assert chance == pytest.approx(0.05)
    assert looks_sorted(labels)
    assert not looks_sorted(rng.permutation(labels))
    assert not looks_sorted(np.array([0, 0, 0, 1]))  # too few pairs to say, and one class dominates


def test_a_seed_without_audits_is_refused_clearly(tiny: Tiny) -> None:
    data, x = tiny  # 60 seed labels at an audit rate of ~0.03: none is drawn
    with pytest.raises(ValueError, match="none of the 60 seed labels was drawn into the audit sample"):
        list(simulate_run(data, x, _config("margin", rounds=2)))


def test_the_gate_pairs_audits_drawn_in_two_strata(tiny: Tiny) -> None:
    # Audits 10x denser in the band form two strata; the gate re-certifies the champion on the
    # challenger's audits in the order the challenger was certified on them (a mismatch is refused).
    data, x = tiny
    dense = _config("margin", rounds=4, audit=AuditPolicy(outside_factor=0.1))
    rows = list(simulate_run(data, x, dense))
    assert [r["round"] for r in rows] == [0, 1, 2, 3, 4]
    assert all(isinstance(r["promoted"], bool) and r["gate_reason"] for r in rows[1:])
