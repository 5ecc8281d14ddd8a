"""Serving replicas on one PostgreSQL (issue #16): one retrain leader with failover, and outbox claims that
never hand an escalation to two replicas."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from hitl.settings import LabelStudioSettings, ServingSettings, Settings
from labeling.config import Taxonomy
from labeling.push import Escalation
from serving.leader import PostgresLeaderLock, leader_lock
from serving.outbox import OutboxWorker, enqueue_escalations
from serving.store import Store
from tests.unit.serving.db_checks import check_replicas_share_one_cache

pytestmark = pytest.mark.integration

TAX = Taxonomy.from_paths(["Sports > Running", "Sports > Cycling"])


def test_one_leader_and_another_takes_over_when_its_connection_dies(postgres_url: str) -> None:
    engine_a, engine_b = create_engine(postgres_url), create_engine(postgres_url)
    a = leader_lock(engine_a, "retrain", Path("/nonexistent"))
    b = PostgresLeaderLock(engine_b, "retrain")
    assert isinstance(a, PostgresLeaderLock)
    try:
        assert a.try_acquire()
        assert not b.try_acquire(), "a second replica does not lead while the first does"
        assert a._connection is not None
        pid = a._connection.execute(text("SELECT pg_backend_pid()")).scalar()
        with create_engine(postgres_url, isolation_level="AUTOCOMMIT").connect() as admin:
            admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})  # the leader dies
        assert not a.held, "a leader whose connection died knows it is no longer leader"
        assert b.try_acquire(), "the lock went with the dead leader's connection"
        assert not a.try_acquire()
    finally:
        a.release()
        b.release()
        engine_a.dispose()
        engine_b.dispose()


def test_a_leader_checking_its_lock_leaves_no_transaction_open(postgres_url: str) -> None:
    # A connection "idle in transaction" is what idle_in_transaction_session_timeout kills: the lock
    # would go with it while the leader is mid-run.
    engine = create_engine(postgres_url)
    lock = PostgresLeaderLock(engine, "retrain-idle")
    try:
        assert lock.try_acquire()
        assert lock.held
        assert lock._connection is not None
        pid = lock._connection.execute(text("SELECT pg_backend_pid()")).scalar()
        lock._connection.commit()
        assert lock.held
        assert not lock._connection.in_transaction()
        with create_engine(postgres_url, isolation_level="AUTOCOMMIT").connect() as admin:
            state = admin.execute(
                text("SELECT state FROM pg_stat_activity WHERE pid = :p"), {"p": pid}
            ).scalar()
        assert state == "idle"
    finally:
        lock.release()
        engine.dispose()


def test_concurrent_outbox_passes_claim_disjoint_entries(postgres_url: str, tmp_path: Path) -> None:
    settings = Settings(
        state_dir=tmp_path,
        labelstudio=LabelStudioSettings(project_title="replicas", sync_interval_s=0),
        serving=ServingSettings(outbox_batch_size=200),
    )
    seed = Store(postgres_url)
    seed.create_all()
    seed.save_project(7, "replicas", 1, TAX)
    escalations = [
        Escalation(
            item_id=f"item-{i}",
            title=f"Shoe {i}",
            predicted_label="Sports > Running",
            confidence=0.4,
            priority=0.5,
            reasons=["below_threshold"],
            model_version="v1",
        )
        for i in range(300)
    ]
    with seed.session() as session:
        enqueue_escalations(session, escalations, "v1")
    replicas = [Store(postgres_url) for _ in range(3)]  # a pool each, as separate processes have
    workers = [OutboxWorker(store, settings) for store in replicas]
    now = datetime.now(UTC).replace(tzinfo=None)
    start = threading.Barrier(len(workers))
    claimed: list[set[str]] = [set() for _ in workers]

    def claim(i: int) -> None:
        start.wait()
        claimed[i] = {d.escalation.item_id for d in workers[i]._due(now)}

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    assert sum(len(c) for c in claimed) == len(set().union(*claimed)), "no entry claimed twice"
    assert set().union(*claimed) == {e.item_id for e in escalations}
    for store in [seed, *replicas]:
        store.close()


def test_replicas_share_the_embedding_cache_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    check_replicas_share_one_cache(postgres_url, tmp_path)
