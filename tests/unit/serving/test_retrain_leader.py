"""Replicas on one database run each retrain once: only the leader (`serving.leader`) claims queued runs,
and when it stops another replica takes over and fails the run it left 'running'."""

from __future__ import annotations

from pathlib import Path

import pytest

from learner.synthetic import generate_catalog
from serving import tracking
from serving.retrain import RetrainWorker, add_seed_labels
from serving.retrain.tables import FAILED, RUNNING, RetrainRun
from serving.store import Store
from tests.unit.serving.retrain_support import BowEmbedder, retrain_settings

pytestmark = pytest.mark.slow


def test_one_replica_trains_and_another_takes_over_when_it_stops(tmp_path: Path) -> None:
    settings = retrain_settings(tmp_path, poll_interval_s=0.1, retrain_every_n_corrections=0)
    store = Store(settings.database_url)
    store.create_all()
    add_seed_labels(store, generate_catalog(300, seed=3, n_categories=4), level=2)
    first = RetrainWorker(settings, store, embedder=BowEmbedder(), auto=False)
    second = RetrainWorker(settings, Store(settings.database_url), embedder=BowEmbedder(), auto=False)
    first.start()
    try:
        run = first.wait(first.trigger("one").run_id, timeout=120)
        assert run.finished, run
        second.start()  # a second replica: not the leader while the first runs
        assert not second._lead()
        # As if the first died mid-run: its MLflow run was open, and stays RUNNING unless someone ends it.
        orphan_mlflow = tracking.start_run(settings, run_name="orphan", trigger="orphan", params={})
        with store.session() as session:
            orphan = RetrainRun(
                status=RUNNING, stage="training", reasons=["orphan"], mlflow_run_id=orphan_mlflow
            )
            session.add(orphan)
            session.flush()
            orphan_id = orphan.id
        first.stop()
        again = second.wait(second.trigger("two").run_id, timeout=120)
        assert again.finished, again
        assert second._lead(), "the second replica took the lead"
        left = second.get(orphan_id)
        assert left is not None
        assert (left.status, left.error) == (FAILED, "interrupted (the server stopped)")
        assert tracking.client(settings).get_run(orphan_mlflow).info.status == "FAILED"
    finally:
        first.stop()
        second.stop()
        store.close()
        second.store.close()
