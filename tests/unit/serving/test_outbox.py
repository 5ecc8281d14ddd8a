"""The escalation outbox: idempotent enqueue, retry schedule, exactly-once delivery, restart safety."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from hitl.settings import LabelStudioSettings, ServingSettings, Settings
from labeling.config import Taxonomy
from labeling.exceptions import LabelStudioApiError, LabelStudioUnavailableError
from labeling.push import Escalation
from serving.outbox import OutboxEntry, OutboxWorker, backoff_delay, enqueue_escalations, outbox_counts
from serving.store import Store

TAX = Taxonomy.from_paths(["Sports > Running", "Home & Kitchen > Cookware"])
TITLE = "Products"
T0 = datetime(2030, 1, 1, 12, 0, 0)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class FlakyLabelStudio:
    """Fails the first `failures` imports (Label Studio down), then imports like the real one. With
    `lost_answers`, the first that many imports land in Label Studio and THEN fail (a timeout)."""

    def __init__(self, failures: int = 0, error: Exception | None = None, lost_answers: int = 0) -> None:
        self.failures = failures
        self.lost_answers = lost_answers
        self.error = error or LabelStudioUnavailableError("Label Studio at http://x did not answer")
        self.calls = 0
        self.imported: list[dict[str, Any]] = []
        self.closed = 0

    def import_tasks(self, project_id: int, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        ids = list(range(1000 + len(self.imported), 1000 + len(self.imported) + len(tasks)))
        self.imported.extend(dict(t) for t in tasks)
        if self.calls <= self.failures + self.lost_answers:
            raise LabelStudioUnavailableError("Label Studio at http://x did not answer import: ReadTimeout")
        return ids

    def tasks_of_items(self, project_id: int, item_ids: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for i, task in enumerate(self.imported):
            item = task["data"]["item_id"]
            if item in item_ids and item not in found:
                found[item] = 1000 + i
        return found

    def close(self) -> None:
        self.closed += 1


def _settings(tmp_path: Path, **serving: Any) -> Settings:
    return Settings(
        state_dir=tmp_path,
        labelstudio=LabelStudioSettings(project_title=TITLE, sync_interval_s=0, push_batch_size=50),
        serving=ServingSettings(outbox_base_backoff_s=2.0, outbox_max_backoff_s=10.0, **serving),
    )


def _store(tmp_path: Path, *, bootstrapped: bool = True) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'hitl.db'}")
    store.create_all()
    if bootstrapped:
        store.save_project(7, TITLE, 1, TAX)
    return store


def _esc(
    i: int, version: str = "v1", *, priority: float | None = None, label: str = "Sports > Running"
) -> Escalation:
    return Escalation(
        item_id=f"item-{i}",
        title=f"Shoe {i}",
        predicted_label=label,
        confidence=0.4,
        priority=priority if priority is not None else 0.5,
        reasons=["low_confidence"],
        model_version=version,
    )


def _enqueue(store: Store, escalations: list[Escalation], version: str = "v1") -> int:
    with store.session() as session:
        return enqueue_escalations(session, escalations, version)


def _entries(store: Store) -> list[OutboxEntry]:
    with store.session() as session:
        return list(session.scalars(select(OutboxEntry).order_by(OutboxEntry.item_id)).all())


def _worker(store: Store, settings: Settings, client: FlakyLabelStudio, clock: Clock) -> OutboxWorker:
    return OutboxWorker(store, settings, lambda: client, clock=clock, rng=random.Random(0))  # type: ignore[arg-type,return-value]


# ------------------------------------------------------------------ enqueue
def test_enqueue_is_idempotent_per_item_and_version_and_a_newer_version_supersedes(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert _enqueue(store, [_esc(1), _esc(2), _esc(1, priority=0.9)]) == 2
    assert _enqueue(store, [_esc(1), _esc(2)]) == 0
    assert _enqueue(store, [_esc(1, "v2")], "v2") == 1
    rows = _entries(store)
    assert [(r.item_id, r.model_version) for r in rows] == [
        ("item-1", "v1"),
        ("item-1", "v2"),
        ("item-2", "v1"),
    ]
    assert rows[0].priority == 0.9  # the duplicate with the higher priority won
    # One task per item: the pending v1 entry of item-1 will not be delivered after v2's.
    assert [r.status for r in rows] == ["superseded", "pending", "pending"]
    assert "v2" in (rows[0].last_error or "")
    assert all(r.attempts == 0 for r in rows)
    assert Escalation.model_validate(rows[2].payload) == _esc(2)


def test_a_rollback_delivers_the_older_versions_decision_again(tmp_path: Path) -> None:
    # v1 escalated item-1 and its task was delivered; v2 re-scored it (pending); the champion is then
    # rolled back to v1, whose re-score must move the task back instead of being skipped as known.
    store = _store(tmp_path)
    assert _enqueue(store, [_esc(1)]) == 1
    with store.session() as session:
        session.execute(update(OutboxEntry).values(status="delivered", attempts=1, task_id=41))
    assert _enqueue(store, [_esc(1, "v2")], "v2") == 1
    assert _enqueue(store, [_esc(1, priority=0.8)], "v1") == 1
    v1, v2 = _entries(store)
    assert (v1.model_version, v1.status, v1.attempts, v1.priority, v1.task_id) == (
        "v1",
        "pending",
        0,
        0.8,
        41,
    )
    assert Escalation.model_validate(v1.payload).priority == 0.8
    assert (v2.model_version, v2.status) == ("v2", "superseded")
    assert _enqueue(store, [_esc(1)], "v1") == 0  # once it is the newest again, a repeat is skipped


def _enqueue_then_fail(store: Store) -> None:
    with store.session() as session:
        assert enqueue_escalations(session, [_esc(1)], "v1") == 1
        raise RuntimeError("the prediction failed to store")


def test_enqueue_does_not_commit_and_rolls_back_with_the_caller(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(RuntimeError, match="failed to store"):
        _enqueue_then_fail(store)
    assert _entries(store) == []


def test_enqueue_refuses_a_mismatched_model_version(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(ValueError, match="differ"), store.session() as session:
        enqueue_escalations(session, [_esc(1, "v2")], "v1")


# ------------------------------------------------------------------ backoff
def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    rng = random.Random(1)
    for attempts, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 10.0), (30, 10.0)]:
        for _ in range(50):
            delay = backoff_delay(attempts, 2.0, 10.0, rng)
            assert ceiling / 2 <= delay <= ceiling


# ------------------------------------------------------------------ worker
def test_an_import_whose_answer_was_lost_is_adopted_not_imported_twice(tmp_path: Path) -> None:
    store, settings, clock = _store(tmp_path), _settings(tmp_path), Clock()
    _enqueue(store, [_esc(i, priority=i / 10) for i in range(1, 4)])
    client = FlakyLabelStudio(lost_answers=1)  # the import lands, then the answer times out
    worker = _worker(store, settings, client, clock)
    assert worker.run_once().failed == 3
    assert len(client.imported) == 3
    clock.now += timedelta(minutes=5)
    report = worker.run_once()
    assert report.delivered == 3
    assert len(client.imported) == 3, "the retry found the tasks instead of importing them again"
    rows = _entries(store)
    first_import = {t["data"]["item_id"]: 1000 + i for i, t in enumerate(client.imported)}
    assert {r.item_id: r.task_id for r in rows} == first_import
    assert {r.status for r in rows} == {"delivered"}


def test_an_import_whose_pass_died_is_adopted_not_imported_twice(tmp_path: Path) -> None:
    # The process died after the import landed and before the entries were marked: they are due again
    # once the claim runs out, with no failed attempt on record.
    store, settings, clock = _store(tmp_path), _settings(tmp_path), Clock()
    _enqueue(store, [_esc(i, priority=i / 10) for i in range(1, 4)])

    class DiesAfterImport(FlakyLabelStudio):
        def import_tasks(self, project_id: int, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
            super().import_tasks(project_id, tasks)
            raise KeyboardInterrupt  # the process is killed here

    dying = DiesAfterImport()
    with pytest.raises(KeyboardInterrupt):
        _worker(store, settings, dying, clock).run_once()
    assert len(dying.imported) == 3
    assert {r.attempts for r in _entries(store)} == {0}
    clock.now += timedelta(seconds=settings.serving.outbox_claim_s + 1)
    restarted = FlakyLabelStudio()
    restarted.imported = dying.imported  # the same Label Studio
    report = _worker(store, settings, restarted, clock).run_once()
    assert report.delivered == 3
    assert len(restarted.imported) == 3, "the tasks were found, not imported a second time"


def test_failures_back_off_then_deliver_exactly_once(tmp_path: Path) -> None:
    store, settings, clock = _store(tmp_path), _settings(tmp_path), Clock()
    _enqueue(store, [_esc(i, priority=i / 10) for i in range(1, 4)])
    client = FlakyLabelStudio(failures=3)
    worker = _worker(store, settings, client, clock)

    previous_delay = 0.0
    for attempt in range(1, 4):
        report = worker.run_once()
        assert (report.attempted, report.failed, report.delivered) == (3, 3, 0)
        rows = _entries(store)
        assert {r.attempts for r in rows} == {attempt}
        assert all(
            r.status == "pending" and "LabelStudioUnavailableError" in (r.last_error or "") for r in rows
        )
        due = min(r.next_attempt_at for r in rows)
        delay = (due - clock.now).total_seconds()
        ceiling = min(10.0, 2.0 * 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling
        assert delay >= previous_delay / 2  # grows (up to jitter)
        previous_delay = delay
        # Not due yet: nothing is attempted.
        clock.now = due - timedelta(milliseconds=1)
        calls = client.calls
        assert worker.run_once().attempted == 0
        assert client.calls == calls
        clock.now = max(r.next_attempt_at for r in rows)

    report = worker.run_once()
    assert (report.delivered, report.failed) == (3, 0)
    rows = _entries(store)
    assert all(r.status == "delivered" and r.attempts == 4 and r.last_error is None for r in rows)
    assert {r.task_id for r in rows} == {1000, 1001, 1002}
    # Highest priority first.
    assert [t["meta"]["item_id"] for t in client.imported] == ["item-3", "item-2", "item-1"]
    assert client.closed == 4

    clock.now += timedelta(hours=1)
    assert worker.run_once().attempted == 0
    assert len(client.imported) == 3
    assert store.pushed_tasks("v1") == {
        ("item-1", "v1"): 1002,
        ("item-2", "v1"): 1001,
        ("item-3", "v1"): 1000,
    }


def test_waits_for_the_project_without_counting_attempts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, settings, clock = _store(tmp_path, bootstrapped=False), _settings(tmp_path), Clock()
    _enqueue(store, [_esc(1), _esc(2)])
    client = FlakyLabelStudio()
    worker = _worker(store, settings, client, clock)
    with caplog.at_level("WARNING", logger="serving.outbox"):
        assert worker.run_once().waiting_for_project
        assert worker.run_once().waiting_for_project
    assert sum("not bootstrapped" in r.message for r in caplog.records) == 1
    assert client.calls == 0
    assert {r.attempts for r in _entries(store)} == {0}

    store.save_project(7, TITLE, 1, TAX)
    assert worker.run_once().delivered == 2


def test_a_label_outside_the_taxonomy_is_dead_and_the_rest_delivered(tmp_path: Path) -> None:
    store, settings, clock = _store(tmp_path), _settings(tmp_path), Clock()
    _enqueue(store, [_esc(1), _esc(2, label="Toys > Games")])
    client = FlakyLabelStudio()
    report = _worker(store, settings, client, clock).run_once()
    assert (report.delivered, report.dead) == (1, 1)
    by_item = {r.item_id: r for r in _entries(store)}
    assert by_item["item-2"].status == "dead"
    assert "label not in" in (by_item["item-2"].last_error or "")
    assert by_item["item-1"].status == "delivered"


def test_a_refused_import_is_split_to_find_the_bad_entry(tmp_path: Path) -> None:
    store, settings, clock = _store(tmp_path), _settings(tmp_path), Clock()
    _enqueue(store, [_esc(1, priority=0.9), _esc(2, priority=0.5)])
    # The batch import and the first single import are refused; the second single import succeeds.
    client = FlakyLabelStudio(failures=2, error=LabelStudioApiError("import", 400, "bad task"))
    report = _worker(store, settings, client, clock).run_once()
    assert (report.attempted, report.delivered, report.dead, report.failed) == (2, 1, 1, 0)
    by_item = {r.item_id: r for r in _entries(store)}
    assert by_item["item-1"].status == "dead"
    assert "HTTP 400" in (by_item["item-1"].last_error or "")
    assert by_item["item-2"].status == "delivered"


def test_server_errors_are_retried_not_dropped(tmp_path: Path) -> None:
    store, settings, clock = _store(tmp_path), _settings(tmp_path), Clock()
    _enqueue(store, [_esc(1)])
    client = FlakyLabelStudio(failures=1, error=LabelStudioApiError("import", 503, "maintenance"))
    assert _worker(store, settings, client, clock).run_once().failed == 1
    assert outbox_counts(store) == {"pending": 1, "delivered": 0, "dead": 0}


def test_a_restart_delivers_what_was_pending_and_never_twice(tmp_path: Path) -> None:
    settings, clock = _settings(tmp_path), Clock()
    first = _store(tmp_path)
    _enqueue(first, [_esc(i) for i in range(5)])
    down = FlakyLabelStudio(failures=1)
    assert _worker(first, settings, down, clock).run_once().failed == 5
    # Item 0 reached Label Studio (and the ledger) just before a crash, but was never marked delivered.
    first.record_pushed(7, "v1", [("item-0", 555, 0.5)])
    first.close()

    second = _store(tmp_path)
    clock.now += timedelta(seconds=settings.serving.outbox_max_backoff_s)
    up = FlakyLabelStudio()
    report = _worker(second, settings, up, clock).run_once()
    assert report.delivered == 5
    assert sorted(t["meta"]["item_id"] for t in up.imported) == [f"item-{i}" for i in range(1, 5)]
    by_item = {r.item_id: r for r in _entries(second)}
    assert by_item["item-0"].task_id == 555
    assert all(r.status == "delivered" for r in by_item.values())


def test_background_thread_delivers_and_stops(tmp_path: Path) -> None:
    store = _store(tmp_path)
    settings = _settings(tmp_path, outbox_interval_s=0.05)
    _enqueue(store, [_esc(1)])
    client = FlakyLabelStudio()
    worker = OutboxWorker(store, settings, lambda: client)  # type: ignore[arg-type,return-value]
    worker.start()
    try:
        deadline = time.monotonic() + 5
        while outbox_counts(store)["delivered"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        worker.stop()
    assert outbox_counts(store)["delivered"] == 1
    assert len(client.imported) == 1


def test_stop_says_when_a_pass_still_hangs_in_label_studio(tmp_path: Path) -> None:
    # The app's shutdown reports such a thread (`app.state.workers_still_running`) instead of
    # pretending it stopped: it may still write to Label Studio.
    store = _store(tmp_path)
    settings = _settings(tmp_path, outbox_interval_s=0.05)
    _enqueue(store, [_esc(1)])
    inside, release = threading.Event(), threading.Event()

    class Hanging(FlakyLabelStudio):
        def import_tasks(self, project_id: int, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
            inside.set()
            release.wait(30)
            return super().import_tasks(project_id, tasks)

    client = Hanging()
    worker = OutboxWorker(store, settings, lambda: client)  # type: ignore[arg-type,return-value]
    worker.start()
    try:
        assert inside.wait(10), "the pass never reached Label Studio"
        assert worker.stop(timeout=0.1) is False
    finally:
        release.set()
    idle = OutboxWorker(store, settings, lambda: client)  # type: ignore[arg-type,return-value]
    idle.start()
    assert idle.stop() is True


def test_a_stop_during_a_pass_records_what_was_delivered_and_gives_the_rest_back(tmp_path: Path) -> None:
    store, settings, clock = _store(tmp_path), _settings(tmp_path, outbox_claim_s=120.0), Clock()
    _enqueue(store, [_esc(i) for i in range(120)])  # three imports of 50 (push_batch_size)

    class StoppedDuringTheFirstImport(FlakyLabelStudio):
        def import_tasks(self, project_id: int, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
            worker._stop.set()  # a shutdown arrives while Label Studio imports the first 50
            return super().import_tasks(project_id, tasks)

    client = StoppedDuringTheFirstImport()
    worker = _worker(store, settings, client, clock)
    report = worker.run_once()
    assert (report.delivered, report.failed) == (50, 0)
    assert outbox_counts(store) == {"pending": 70, "delivered": 50, "dead": 0}
    # Given back untried: due at once for the next start (no wait for the claim), no attempt counted.
    pending = [r for r in _entries(store) if r.status == "pending"]
    assert all(r.attempts == 0 and r.next_attempt_at <= clock() for r in pending)
    again = _worker(store, settings, up := FlakyLabelStudio(), clock).run_once()
    assert again.delivered == 70
    assert len(up.imported) == 70
    assert len(client.imported) == 50


def test_a_pass_gives_back_only_a_claim_it_still_holds(tmp_path: Path) -> None:
    store, settings, clock = _store(tmp_path), _settings(tmp_path, outbox_claim_s=120.0), Clock()
    _enqueue(store, [_esc(i) for i in range(3)])
    slow, other = (
        _worker(store, settings, FlakyLabelStudio(), clock),
        _worker(store, settings, FlakyLabelStudio(), clock),
    )
    mine = slow._due(clock())
    clock.now += timedelta(seconds=121)  # the slow pass outlived its claim: another replica takes them
    theirs = other._due(clock())
    assert len(mine) == len(theirs) == 3
    slow._release(mine)  # then the slow replica shuts down
    assert all(r.next_attempt_at > clock() for r in _entries(store)), "still the other replica's"
    other._release(theirs)
    assert all(r.next_attempt_at <= clock() for r in _entries(store))


def test_a_pass_claims_its_entries_so_a_second_replica_does_not_deliver_them(tmp_path: Path) -> None:
    store, settings, clock = _store(tmp_path), _settings(tmp_path, outbox_claim_s=120.0), Clock()
    _enqueue(store, [_esc(i) for i in range(5)])
    first, second = FlakyLabelStudio(), FlakyLabelStudio()
    one, other = _worker(store, settings, first, clock), _worker(store, settings, second, clock)

    claimed = one._due(clock())

    assert len(claimed) == 5
    assert other.run_once().delivered == 0, "claimed entries are not due for another replica"
    clock.now += timedelta(seconds=121)  # the claimer died before delivering: now others may
    assert other.run_once().delivered == 5
    assert len(second.imported) == 5
    assert first.imported == []


def test_two_replicas_that_read_the_same_due_rows_deliver_each_once(tmp_path: Path) -> None:
    # SQLite has no row locks: both passes can read the same due rows before either writes its claim.
    store, settings, clock = _store(tmp_path), _settings(tmp_path), Clock()
    _enqueue(store, [_esc(i) for i in range(1, 4)])
    first = _worker(store, settings, FlakyLabelStudio(), clock)
    second = _worker(store, settings, FlakyLabelStudio(), clock)
    with store.session() as session:
        read_by_first = list(session.scalars(select(OutboxEntry)).all())
        taken_by_second = second._due(clock.now)  # the other replica claims them meanwhile
        taken_by_first = first._claim(session, read_by_first, clock.now)
    assert len(taken_by_second) == 3
    assert taken_by_first == []  # its claim finds them no longer due


def test_similar_items_that_cannot_be_found_leave_the_tasks_as_they_were_and_log_no_item_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from serving.outbox import _Due, _with_similar

    def broken(escalations: Sequence[Escalation]) -> list[Escalation]:
        raise ValueError(f"no neighbours for {escalations[0].title!r} sent by jane.doe@example.com")

    entries = [_Due(1, 0, _esc(1))]
    with caplog.at_level("ERROR", logger="serving.outbox"):
        assert _with_similar(broken, entries) == entries
    assert "pushing without them" in caplog.text
    assert "ValueError" in caplog.text
    assert "jane.doe@example.com" not in caplog.text
    assert "Traceback" not in caplog.text
