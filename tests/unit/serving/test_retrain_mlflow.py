"""Retrain runs against a real (sqlite) MLflow: promotion, the gate refusing a worse model, a crash."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from hitl.settings import Settings
from learner.bundle import ModelBundle
from learner.synthetic import generate_catalog
from learner.training import TrainingResult
from serving import registry, tracking
from serving.retrain import RetrainWorker, TrainingInputs, add_seed_labels, default_train
from serving.retrain.promotion import Promoter
from serving.retrain.tables import RunRecord
from serving.retrain.training import Embedder, TrainFn
from serving.store import Store
from tests.unit.serving.retrain_support import BowEmbedder, correction, predicted, retrain_settings

pytestmark = pytest.mark.slow


def seeded(tmp: Path) -> tuple[Settings, Store]:
    """Settings and a store holding 500 seed labels (a quarter of them audits), no model yet."""
    settings = retrain_settings(tmp)
    store = Store(settings.database_url)
    store.create_all()
    add_seed_labels(store, generate_catalog(500, seed=3, n_categories=5), level=2)
    return settings, store


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Store]]:
    settings, store = seeded(tmp_path_factory.mktemp("retrain-mlflow"))
    yield settings, store
    store.close()


def shuffled_labels(inputs: TrainingInputs) -> TrainingResult:
    """A deliberately worse model: trained on labels shuffled at random."""
    rng = random.Random(0)
    y = list(inputs.y_train)
    rng.shuffle(y)
    return default_train(replace(inputs, y_train=y))


def crash(inputs: TrainingInputs) -> TrainingResult:
    raise RuntimeError("out of memory (simulated)")


def run_once(
    settings: Settings,
    store: Store,
    train_fn: TrainFn = default_train,
    *,
    embedder: Embedder | None = None,
    embedder_for: Callable[[ModelBundle], Embedder] | None = None,
) -> RunRecord:
    worker = RetrainWorker(
        settings,
        store,
        embedder=embedder or BowEmbedder(),
        embedder_for=embedder_for,
        train_fn=train_fn,
        auto=False,
    )
    run_id = worker.trigger("test").run_id
    assert worker.run_next()
    record = worker.get(run_id)
    assert record is not None
    return record


@pytest.fixture(scope="module")
def champion(env: tuple[Settings, Store]) -> RunRecord:
    """The first run of the module, whichever test asks first: every test can rely on a champion, v1."""
    settings, store = env
    return run_once(settings, store)


def test_first_run_is_promoted_with_metrics_and_plots(
    env: tuple[Settings, Store], champion: RunRecord
) -> None:
    settings, _ = env
    record = champion
    assert record.status == "promoted", record.error
    assert record.version == "1"
    assert registry.champion_version(settings) == "1"
    client = tracking.client(settings)
    run = client.get_run(record.mlflow_run_id)
    assert run.info.status == "FINISHED"
    for key in (
        "accuracy",
        "auto_accept_coverage",
        "threshold",
        "n_audits",
        "projected_escalation_rate",
        "training_time_s",
        "n_labels",
    ):
        assert key in run.data.metrics, key
    assert run.data.metrics["accuracy"] > 0.8
    # The default statement is `expected`: its figure is the conformal estimate, not a bound.
    assert settings.learner.guarantee == "expected"
    assert "certified_error_estimate" in run.data.metrics
    assert "certified_error_bound" not in run.data.metrics
    assert run.data.params["n_labels"] == "500"
    plots = {a.path for a in client.list_artifacts(record.mlflow_run_id, "plots")}
    assert plots == {"plots/confusion_matrix.png", "plots/reliability_diagram.png", "plots/risk_coverage.png"}
    staged = settings.models_dir / "retrain"
    assert not staged.exists() or not any(staged.iterdir()), "MLflow holds the bundle: no staged copy kept"


def test_a_worse_model_stays_a_challenger(env: tuple[Settings, Store], champion: RunRecord) -> None:
    settings, store = env
    record = run_once(settings, store, shuffled_labels)
    assert record.status == "rejected"
    assert record.version is not None
    assert int(record.version) > int(champion.version or 0)
    assert record.gate_reason
    assert "significantly worse on accuracy" in record.gate_reason
    assert "paired z-test" in record.gate_reason
    assert registry.champion_version(settings) == "1"
    assert registry.champion_version(settings, settings.retrain.challenger_alias) == record.version
    mv = tracking.client(settings).get_model_version(settings.mlflow.registered_model, record.version)
    assert mv.tags["hitl.gate"] == "rejected"


def test_a_crashing_run_fails_and_leaves_the_champion(
    env: tuple[Settings, Store], champion: RunRecord
) -> None:
    settings, store = env
    record = run_once(settings, store, crash)
    assert record.status == "failed"
    assert record.error is not None
    assert "out of memory" in record.error
    assert registry.champion_version(settings) == "1"
    run = tracking.client(settings).get_run(record.mlflow_run_id or "")
    assert run.info.status == "FAILED"
    assert "out of memory" in run.data.tags[tracking.ERROR_TAG]


def test_a_challenger_with_other_features_is_compared_on_the_champions_own_inputs(
    env: tuple[Settings, Store], champion: RunRecord
) -> None:
    # The champion (v1) is a hybrid bundle (embedding + hashed n-grams, the default). A challenger
    # trained on plain embeddings must still be gated against it: the champion's holdout predictions
    # need the champion's own feature spec, or its head gets inputs of the wrong width.
    settings, store = env
    assert registry.champion_version(settings) == "1"
    learner = settings.learner.model_copy(update={"features": "embedding"})
    record = run_once(settings.model_copy(update={"learner": learner}), store)
    assert record.status in {"promoted", "rejected"}, record.error
    challenger = ModelBundle.load(registry.download(settings, record.version or ""), device="cpu")
    assert challenger.features.kind == "embedding"
    champion_bundle = ModelBundle.load(registry.download(settings, "1"), device="cpu")
    assert champion_bundle.features.kind == "hybrid"


def test_the_worker_hashes_each_title_once_across_runs(
    env: tuple[Settings, Store], champion: RunRecord
) -> None:
    # A retrain after one correction sees the same titles again: their n-gram rows come from the
    # worker's memo, and the champion's re-certification (same n-gram settings) reuses them too.
    settings, store = env
    worker = RetrainWorker(settings, store, embedder=BowEmbedder(), auto=False)
    statuses = []
    for _ in range(2):
        run_id = worker.trigger("test").run_id
        assert worker.run_next()
        record = worker.get(run_id)
        assert record is not None
        statuses.append(record.status)
        if len(statuses) == 1:
            first_misses = worker.ngram_memo.misses
    memo = worker.ngram_memo
    assert set(statuses) <= {"promoted", "rejected"}, statuses
    assert first_misses == len(memo) > 0  # every distinct text hashed once ...
    assert memo.misses == first_misses  # ... and not again in the second run
    assert memo.hits > 2 * len(memo)


def test_with_warm_starts_on_the_champion_starts_the_next_head(tmp_path: Path) -> None:
    # Its own store and registry: the module's champion may be another test's embedding-only model.
    settings = retrain_settings(tmp_path)
    head = settings.learner.head.model_copy(update={"warm_start_iterations": 5})
    warm = settings.model_copy(update={"learner": settings.learner.model_copy(update={"head": head})})
    store = Store(settings.database_url)
    store.create_all()
    add_seed_labels(store, generate_catalog(300, seed=4, n_categories=5), level=2)
    try:
        first = run_once(warm, store)
        assert first.status == "promoted", first.error
        assert first.metrics["warm_started"] == 0.0  # no champion yet: from zero
        record = run_once(warm, store)
        assert record.status in {"promoted", "rejected"}, record.error
        assert record.metrics["warm_started"] == 1.0
        bundle = ModelBundle.load(registry.download(settings, record.version or ""), device="cpu")
        assert bundle.metadata["warm_started"] is True
        assert bundle.head.n_iter_ <= 5
        assert run_once(settings, store).metrics["warm_started"] == 0.0  # the default: from zero
    finally:
        store.close()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[tuple[Settings, Store]]:
    settings, store = seeded(tmp_path)
    yield settings, store
    store.close()


def test_a_champion_on_another_encoder_is_gated_on_its_own_embeddings(
    fresh: tuple[Settings, Store],
) -> None:
    # A fine-tuned challenger, or one trained after `learner.encoder` changed, has another encoder
    # than the champion. The champion is then scored on its own encoder's embeddings of the same
    # audits and stream: the 64-wide champion head could not even read the challenger's 32-wide ones.
    settings, store = fresh
    assert run_once(settings, store).status == "promoted"
    for i in range(30):  # routed since, unlabelled: the stream both models are certified on
        predicted(store, "1", f"stream-{i}", f"organic tea bags {i}", escalated=False, reasons=[])
    champion_embedder = BowEmbedder(64)
    asked: list[str] = []

    def embedder_for(bundle: ModelBundle) -> Embedder:
        asked.append(bundle.encoder_id)
        return champion_embedder

    record = run_once(settings, store, embedder=BowEmbedder(32), embedder_for=embedder_for)
    assert record.status in {"promoted", "rejected"}, record.error
    assert asked == ["test-bow-64"]  # loaded once, for the champion
    assert "paired z-test" in (record.gate_reason or "")
    assert record.metrics["champion_accuracy"] > 0.8  # a good model, on its own inputs
    params = tracking.client(settings).get_run(record.mlflow_run_id or "").data.params
    scored_stream = int(params["n_stream"]) - int(params["n_stream_trained_on"])
    assert scored_stream >= 30
    # The audits and the stream it is certified on, each embedded once.
    assert champion_embedder.embedded == int(params["n_audits"]) + scored_stream
    bundle = ModelBundle.load(registry.download(settings, record.version or ""), device="cpu")
    assert bundle.encoder_id == "test-bow-32"


def test_a_champion_whose_encoder_does_not_reproduce_stays_and_the_challenger_waits(
    fresh: tuple[Settings, Store],
) -> None:
    settings, store = fresh
    assert run_once(settings, store).status == "promoted"
    record = run_once(settings, store, embedder=BowEmbedder(32), embedder_for=lambda bundle: BowEmbedder(16))
    assert record.status == "rejected"
    assert "is 'test-bow-16', not 'test-bow-64' as trained" in (record.gate_reason or "")
    assert "promote manually" in (record.gate_reason or "")
    assert registry.champion_version(settings) == "1"


def test_mlflow_failing_after_the_promotion_does_not_fail_the_promoted_run(
    fresh: tuple[Settings, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, store = fresh
    real_end_run = tracking.end_run

    def end_run(settings: Settings, run_id: str, **kwargs: Any) -> None:
        if not kwargs.get("failed"):
            raise tracking_error("MLflow went away after the alias moved")
        real_end_run(settings, run_id, **kwargs)

    monkeypatch.setattr(tracking, "end_run", end_run)
    record = run_once(settings, store)
    assert record.status == "promoted", record.error
    assert record.version == "1"
    assert registry.champion_version(settings) == "1"


def test_a_run_failing_between_registration_and_promotion_names_its_version_and_leaves_no_champion(
    fresh: tuple[Settings, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, store = fresh

    def promote(self: Promoter, version: str, **kwargs: Any) -> None:
        raise tracking_error("MLflow refused the alias")

    monkeypatch.setattr(Promoter, "promote", promote)
    record = run_once(settings, store)
    assert record.status == "failed"
    assert record.version == "1"  # registered before it failed: the row says what MLflow holds
    assert record.mlflow_run_id is not None
    assert registry.champion_version(settings) is None


def tracking_error(message: str) -> Exception:
    from mlflow.exceptions import MlflowException

    return MlflowException(message)


def test_a_deleted_audit_review_never_lets_the_champion_be_certified_on_its_own_training_audits(
    tmp_path: Path,
) -> None:
    # Window 4 over 10 routed audits: v1 certifies on the 4 newest and trains on the 6 older ones.
    settings, store = seeded(tmp_path)
    audit = settings.learner.audit.model_copy(update={"certify_window": 4})
    settings = settings.model_copy(update={"learner": settings.learner.model_copy(update={"audit": audit})})
    catalog = generate_catalog(10, seed=11, n_categories=5)
    for n, product in enumerate(catalog, start=1):
        item = f"routed-{n:02d}"
        predicted(store, "v0", item, product.title, escalated=True, reasons=["audit"], audit_probability=0.1)
        label = " > ".join((product.category or [])[:2])
        store.record_correction(correction(n, item, label, minute=n))
    first = run_once(settings, store)
    assert first.status == "promoted", first.error
    params = tracking.client(settings).get_run(first.mlflow_run_id or "").data.params
    assert params["n_audits"] == "4"  # the seed audits are older than the window: they train
    # A reviewer deletes the review of the 8th audit: it waits again, and so does everything after it.
    store.record_correction(correction(8, "routed-08", None, action="deleted", minute=30))
    second = run_once(settings, store)
    params = tracking.client(settings).get_run(second.mlflow_run_id or "").data.params
    # Left to certify: the 7th audit only. The window alone would take the 4th to the 7th, three of
    # which trained v1, the champion the gate re-certifies on them.
    assert params["n_audits"] == "1", params
    # An audit the champion trained on loses its review: it leaves training, and holds nothing back.
    store.record_correction(correction(2, "routed-02", None, action="deleted", minute=31))
    third = run_once(settings, store)
    assert third.status != "failed", third.error
    params = tracking.client(settings).get_run(third.mlflow_run_id or "").data.params
    assert (params["n_audits"], params["unreviewed_audits"]) == ("1", "2"), params


def test_a_champion_moved_by_hand_during_a_run_is_never_overwritten_by_it(tmp_path: Path) -> None:
    settings, store = seeded(tmp_path)
    assert run_once(settings, store).status == "promoted"  # v1
    assert run_once(settings, store, shuffled_labels).status == "rejected"  # v2, a challenger

    def rolled_forward_meanwhile(inputs: TrainingInputs) -> TrainingResult:
        registry.set_alias(settings, "2")  # an engineer promotes v2 by hand while this run trains
        return default_train(inputs)

    record = run_once(settings, store, rolled_forward_meanwhile)
    assert record.status == "rejected", record.error
    assert "the champion moved during this run (v1 -> v2)" in (record.gate_reason or "")
    assert registry.champion_version(settings) == "2"
    store.close()


def test_a_champion_moved_by_hand_while_the_run_registers_is_never_overwritten_by_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, store = seeded(tmp_path)
    assert run_once(settings, store).status == "promoted"  # v1
    assert run_once(settings, store, shuffled_labels).status == "rejected"  # v2, a challenger
    register = tracking.log_model_version

    def rolled_forward_while_registering(*args: Any, **kwargs: Any) -> str:
        registry.set_alias(settings, "2")  # after the gate, before the promotion
        return register(*args, **kwargs)

    monkeypatch.setattr(tracking, "log_model_version", rolled_forward_while_registering)
    record = run_once(settings, store)
    assert record.status == "rejected", record.error
    assert "the champion moved during this run (v1 -> v2)" in (record.gate_reason or "")
    assert registry.champion_version(settings) == "2"
    version = tracking.client(settings).get_model_version(settings.mlflow.registered_model, "3")
    assert version.tags["hitl.gate"] == "rejected"
    store.close()


def test_a_promotion_whose_model_cannot_load_yet_is_still_recorded_and_answers(
    fresh: tuple[Settings, Store],
) -> None:
    # The alias moved and the audit trail says so before the holder refreshes: a refresh that fails
    # (here: a holder told to serve a bundle it was not given) must not turn the move into an error.
    from serving.model import ModelHolder

    settings, store = fresh
    assert run_once(settings, store).status == "promoted"
    misconfigured = settings.model_copy(
        update={
            "serving": settings.serving.model_copy(update={"model_source": "bundle", "bundle_path": None})
        }
    )
    promoter = Promoter(settings, store, ModelHolder(misconfigured))
    report = promoter.promote("1", reason="again", actor="t")
    assert report.swapped is False
    assert registry.champion_version(settings) == "1"
    assert [e.action for e in store.audit_trail(kind="model_event")][-1] == "promoted"
    # Its open escalations are re-scored once the holder serves it, not never.
    assert promoter.pending_rescore == registry.version_label(settings, "1")
    assert promoter.retry_rescore() is None
    assert promoter.pending_rescore == registry.version_label(settings, "1")


def test_a_run_whose_id_cannot_be_recorded_is_not_left_running_in_mlflow(
    fresh: tuple[Settings, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, store = fresh
    update = RetrainWorker._update
    refused: list[str] = []

    def store_refuses_the_run_id(self: RetrainWorker, run_id: int, **values: Any) -> None:
        if set(values) == {"mlflow_run_id"} and not refused:  # the first write of the id, once
            refused.append(values["mlflow_run_id"])
            raise RuntimeError("database is locked")
        update(self, run_id, **values)

    monkeypatch.setattr(RetrainWorker, "_update", store_refuses_the_run_id)
    assert run_once(settings, store).status == "failed"
    (run,) = tracking.client(settings).search_runs([tracking.experiment_id(settings)])
    assert run.info.run_id == refused[0]
    assert run.info.status == "FAILED"


def test_a_new_leader_sets_label_studio_to_the_champions_version(fresh: tuple[Settings, Store]) -> None:
    # A promotion whose Label Studio update failed was retried only by the process that made it.
    settings, store = fresh
    assert run_once(settings, store).status == "promoted"
    worker = RetrainWorker(settings, store, embedder=BowEmbedder(), auto=False)
    try:
        assert worker.promoter.pending_labelstudio is None
        assert worker._lead()
        assert worker.promoter.pending_labelstudio == registry.version_label(settings, "1")
    finally:
        worker.stop()
