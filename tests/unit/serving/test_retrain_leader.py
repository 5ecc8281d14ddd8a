"""Replicas on one database run each retrain once: only the leader (`serving.leader`) claims queued runs,
and when it stops another replica takes over and fails the run it left 'running'."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from learner.synthetic import generate_catalog
from learner.training import TrainingResult
from serving import tracking
from serving.retrain import RetrainWorker, TrainingInputs, add_seed_labels, default_train
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


_DYING_LEADER = """
import sys, threading
from pathlib import Path
from serving.retrain import RetrainWorker
from serving.store import Store
from tests.unit.serving.retrain_support import BowEmbedder, retrain_settings

settings = retrain_settings(Path(sys.argv[1]), poll_interval_s=0.1, retrain_every_n_corrections=0)
blocked = threading.Event()

def train_forever(inputs):
    print("training", flush=True)
    blocked.wait()  # never returns: the process is killed mid-run

worker = RetrainWorker(settings, Store(settings.database_url), embedder=BowEmbedder(), auto=False,
                       train_fn=train_forever)
worker.start()
worker.trigger("dies")
blocked.wait()
"""


def test_a_leader_killed_mid_run_is_replaced_and_its_run_failed(tmp_path: Path) -> None:
    """`kill -9`, not a clean stop: the OS releases the dead leader's lock, and another replica leads
    within its poll interval and fails the run the dead one left running."""
    settings = retrain_settings(tmp_path, poll_interval_s=0.1, retrain_every_n_corrections=0)
    store = Store(settings.database_url)
    store.create_all()
    add_seed_labels(store, generate_catalog(300, seed=3, n_categories=4), level=2)
    leader = subprocess.Popen(
        [sys.executable, "-c", _DYING_LEADER, str(tmp_path)],
        cwd=Path(__file__).resolve().parents[3],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    second = RetrainWorker(settings, Store(settings.database_url), embedder=BowEmbedder(), auto=False)
    try:
        assert leader.stdout is not None
        assert leader.stdout.readline().strip() == "training", leader.stderr.read() if leader.stderr else ""
        second.start()
        time.sleep(0.5)
        assert not second.leader.held, "a second leader while the first is alive"
        leader.kill()  # SIGKILL: no shutdown code runs
        leader.wait(timeout=10)
        killed_at = time.monotonic()
        deadline = killed_at + 10
        while not second.leader.held and time.monotonic() < deadline:
            time.sleep(0.05)
        assert second.leader.held, "no replica took the lead after the leader died"
        assert time.monotonic() - killed_at < 2.0, "not within a poll interval or so"
        (orphan,) = [r for r in second.runs() if r.reasons == ["dies"]]
        deadline = time.monotonic() + 5
        while orphan.status != FAILED and time.monotonic() < deadline:
            time.sleep(0.05)
            orphan = second.get(orphan.id) or orphan
        assert (orphan.status, orphan.error) == (FAILED, "interrupted (the server stopped)")
    finally:
        if leader.poll() is None:
            leader.kill()
        second.stop()
        store.close()
        second.store.close()


def test_a_worker_still_training_after_its_stop_keeps_the_lead_until_its_run_ends(tmp_path: Path) -> None:
    """A training step that outlives `stop`'s wait must not hand the lead over: another replica would
    start a second retrain beside it. The thread gives the lead up itself when it ends."""
    settings = retrain_settings(tmp_path, poll_interval_s=0.05, retrain_every_n_corrections=0)
    store = Store(settings.database_url)
    store.create_all()
    add_seed_labels(store, generate_catalog(300, seed=3, n_categories=4), level=2)
    training, release = threading.Event(), threading.Event()

    def train_slowly(inputs: TrainingInputs) -> TrainingResult:
        training.set()
        release.wait(60)
        return default_train(inputs)

    first = RetrainWorker(settings, store, embedder=BowEmbedder(), auto=False, train_fn=train_slowly)
    second = RetrainWorker(settings, Store(settings.database_url), embedder=BowEmbedder(), auto=False)
    first.start()
    try:
        run_id = first.trigger("slow").run_id
        assert training.wait(60), "the run never started training"
        assert first.stop(timeout=0.2) is False
        assert first.leader.held
        assert not second._lead(), "a second leader while the first still trains"
        release.set()
        deadline = time.monotonic() + 60
        while first.leader.held and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not first.leader.held, "the thread kept the lead after its run ended"
        assert second._lead()
        record = first.get(run_id)
        assert record is not None
        assert record.finished, record
    finally:
        release.set()
        first.stop()
        second.stop()
        store.close()
        second.store.close()


def test_a_trigger_never_folds_into_a_run_another_replica_claimed_meanwhile(tmp_path: Path) -> None:
    from sqlalchemy import event, update

    settings = retrain_settings(tmp_path)
    store = Store(settings.database_url)
    store.create_all()
    worker = RetrainWorker(settings, store, embedder=BowEmbedder(), auto=False)
    first = worker.trigger("corrections:200")
    other = Store(settings.database_url)  # another replica's leader, claiming right after the read

    claimed_once: list[bool] = []

    def claim_after_the_read(conn: object, cursor: object, statement: str, *args: object) -> None:
        read = statement.lstrip().upper().startswith("SELECT") and "retrain_runs" in statement
        if read and not claimed_once:
            claimed_once.append(True)
            with other.session() as session:
                session.execute(update(RetrainRun).values(status=RUNNING))

    event.listen(store.engine, "after_cursor_execute", claim_after_the_read)
    try:
        second = worker.trigger("api:nightly")
    finally:
        event.remove(store.engine, "after_cursor_execute", claim_after_the_read)
        worker.stop()
        other.close()
    assert claimed_once
    assert second.status == "queued"
    assert second.run_id != first.run_id
    claimed = worker.get(first.run_id)
    assert claimed is not None
    assert claimed.reasons == ["corrections:200"]  # the claimed run was not changed behind its back
    store.close()


def test_a_leader_that_cannot_fail_the_orphaned_runs_lets_go_and_cleans_up_next_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = retrain_settings(tmp_path)
    store = Store(settings.database_url)
    store.create_all()
    with store.session() as db:
        db.add(RetrainRun(status=RUNNING, stage="training", reasons=["before a crash"]))
    worker = RetrainWorker(settings, store, embedder=BowEmbedder(), auto=False)
    session = store.session

    def locked() -> object:
        raise RuntimeError("database is locked")

    monkeypatch.setattr(store, "session", locked)
    try:
        with pytest.raises(RuntimeError, match="locked"):
            worker._lead()
        assert not worker.leader.held, "no leading with runs left 'running'"
        monkeypatch.setattr(store, "session", session)
        assert worker._lead()
        (run,) = worker.runs()
        assert (run.status, run.error) == (FAILED, "interrupted (the server stopped)")
    finally:
        worker.stop()
        store.close()
