"""The prediction write path: one writer thread, group commit, per-write atomicity, drain on close."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import event, select

from labeling.push import Escalation
from serving.store import AuditEvent, Item, Prediction, Store
from tests.unit.serving.support import new


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Store(f"sqlite:///{tmp_path / 'hitl.db'}")
    db.create_all()
    db.register_model_version("v1", source="test", encoder_id="e", n_labels=2, details={})
    yield db
    db.close()


def count_commits(store: Store) -> list[int]:
    commits = [0]

    def on_commit(_conn: object) -> None:
        commits[0] += 1

    event.listen(store.engine, "commit", on_commit)
    return commits


class Gate:
    """An escalation hook that holds the writer inside its transaction until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, *_: object) -> None:
        self.entered.set()
        assert self.release.wait(10)


def test_concurrent_writes_get_distinct_ids_and_matching_audit_rows(store: Store) -> None:
    def write(i: int) -> list[int]:
        return store.record_predictions("v1", [new(f"a{i}"), new(f"b{i}", "auto_accepted")])

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(write, range(64)))
    ids = [i for r in results for i in r]
    assert len(set(ids)) == len(ids) == 128
    with store.session() as session:
        stored = {pid: item for pid, item in session.execute(select(Prediction.id, Prediction.item_id))}
        audited = {
            pid: item for pid, item in session.execute(select(AuditEvent.prediction_id, AuditEvent.item_id))
        }
    # Every caller got the ids of ITS rows, in its order, and each has its own audit row.
    for i, (first, second) in enumerate(results):
        assert (stored[first], stored[second]) == (f"a{i}", f"b{i}")
    assert audited == stored


def test_writes_waiting_together_share_one_commit(store: Store) -> None:
    commits = count_commits(store)
    gate = Gate()
    blocker = store.submit_predictions("v1", [new("first")], on_escalated=gate)
    assert gate.entered.wait(10)
    waiting = [store.submit_predictions("v1", [new(f"w{i}")]) for i in range(10)]
    before = commits[0]
    gate.release.set()
    assert len(blocker.result(10)) == 1
    assert all(len(f.result(10)) == 1 for f in waiting)
    assert commits[0] - before == 2  # the blocked write's own commit, then ONE for the ten waiting
    assert store.count(Prediction) == store.count(AuditEvent) == 11


def test_a_failing_write_in_a_group_fails_alone(store: Store) -> None:
    gate = Gate()
    blocker = store.submit_predictions("v1", [new("first")], on_escalated=gate)
    assert gate.entered.wait(10)

    def broken_outbox(*_: object) -> None:
        raise RuntimeError("outbox down")

    good_before = store.submit_predictions("v1", [new("g1")])
    bad = store.submit_predictions("v1", [new("bad1"), new("bad2")], on_escalated=broken_outbox)
    unknown_version = store.submit_predictions("v9", [new("bad3")])  # foreign key: no such version
    good_after = store.submit_predictions("v1", [new("g2")])
    gate.release.set()
    blocker.result(10)
    with pytest.raises(RuntimeError, match="outbox down"):
        bad.result(10)
    with pytest.raises(Exception, match="FOREIGN KEY"):
        unknown_version.result(10)
    assert len(good_before.result(10)) == len(good_after.result(10)) == 1
    with store.session() as session:
        items = set(session.scalars(select(Item.id)))
    assert items == {"first", "g1", "g2"}  # nothing of the failed writes, not even their items
    assert store.count(Prediction) == store.count(AuditEvent) == 3


def test_escalations_reach_the_hook_per_write_with_its_version(store: Store) -> None:
    store.register_model_version("v2", source="test", encoder_id="e", n_labels=2, details={})
    seen: list[tuple[str, list[str]]] = []

    def hook(_session: object, escalations: list[Escalation], version: str) -> None:
        seen.append((version, [e.item_id for e in escalations]))

    gate = Gate()
    blocker = store.submit_predictions("v1", [new("x")], on_escalated=gate)
    assert gate.entered.wait(10)
    one = store.submit_predictions("v1", [new("a"), new("b", "auto_accepted")], on_escalated=hook)
    two = store.submit_predictions("v2", [new("c")], on_escalated=hook)
    gate.release.set()
    blocker.result(10), one.result(10), two.result(10)
    assert seen == [("v1", ["a"]), ("v2", ["c"])]


def test_close_drains_every_submitted_write(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hitl.db'}"
    store = Store(url)
    store.create_all()
    store.register_model_version("v1", source="test", encoder_id="e", n_labels=2, details={})
    futures = [store.submit_predictions("v1", [new(f"i{i}")]) for i in range(200)]
    store.close()  # no waiting on the futures first: close itself must finish them
    assert all(f.done() and len(f.result()) == 1 for f in futures)
    reopened = Store(url)
    assert reopened.count(Prediction) == reopened.count(AuditEvent) == 200
    # A closed store still writes (a new writer starts on demand), e.g. a late shutdown task.
    assert len(reopened.record_predictions("v1", [new("late")])) == 1
    reopened.close()


def test_an_empty_write_touches_nothing(store: Store) -> None:
    commits = count_commits(store)
    assert store.record_predictions("v1", []) == []
    assert commits[0] == 0


def test_a_write_cancelled_while_waiting_is_not_stored_and_a_running_one_cannot_be_cancelled(
    store: Store,
) -> None:
    gate = Gate()
    running = store.submit_predictions("v1", [new("running")], on_escalated=gate)
    assert gate.entered.wait(10)
    waiting = store.submit_predictions("v1", [new("waiting")])
    assert not running.cancel()  # already being written: it will be committed
    assert waiting.cancel()
    kept = store.submit_predictions("v1", [new("kept")])
    gate.release.set()
    assert len(running.result(10)) == len(kept.result(10)) == 1
    with store.session() as session:
        assert set(session.scalars(select(Item.id))) == {"running", "kept"}
