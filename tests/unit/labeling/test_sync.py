from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from labeling.client import LabelStudioClient
from labeling.config import Taxonomy
from labeling.exceptions import ReviewerDirectoryUnavailable
from labeling.sync import PeriodicSync, sync_project
from serving.store import Store
from tests.unit.labeling.fakes import FakeLabelStudio

TAX = Taxonomy.from_paths(["Shoes", "Hats"])


def annotation(aid: int, label: str, updated: str, **kw: Any) -> dict[str, Any]:
    return {
        "id": aid,
        "completed_by": 2,
        "created_at": "2025-01-01T10:00:00Z",
        "updated_at": updated,
        "result": [{"from_name": "category", "value": {"choices": [label]}}],
        "lead_time": 1.0,
        **kw,
    }


def test_sync_fills_gaps_updates_and_deletions_idempotently(tmp_path: Path) -> None:
    fake = FakeLabelStudio()
    fake.tasks = [
        {
            "id": 1,
            "data": {"item_id": "a"},
            "meta": {"item_id": "a", "predicted_label": "Hats"},
            "predictions": [{"model_version": "v3"}],
            "annotations": [annotation(11, "Shoes", "2025-01-01T10:00:00Z")],
        },
        {
            "id": 2,
            "data": {"item_id": "b"},
            "meta": {"item_id": "b"},
            "annotations": [annotation(12, "Boots", "2025-01-01T10:00:00Z")],
        },
    ]
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.create_all()
    client = cast(LabelStudioClient, fake)

    first = sync_project(client, store, 1, TAX)
    assert (first.recorded, first.rejected, first.deleted) == (2, 1, 0)
    (row,) = store.history(11)
    assert (row.action, row.source, row.label, row.model_version, row.predicted_label) == (
        "created",
        "sync",
        "Shoes",
        "v3",
        "Hats",
    )
    assert sync_project(client, store, 1, TAX).recorded == 0

    fake.tasks[0]["annotations"] = [annotation(11, "Hats", "2025-01-01T11:00:00Z")]
    fake.tasks[1]["annotations"] = []
    second = sync_project(client, store, 1, TAX)
    assert (second.recorded, second.deleted) == (1, 1)
    assert [(r.action, r.label) for r in store.history(11)] == [("created", "Shoes"), ("updated", "Hats")]
    assert [r.action for r in store.history(12)] == ["rejected", "deleted"]


def test_a_malformed_task_is_skipped_keeps_its_labels_and_stays_out_of_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeLabelStudio()
    good = {
        "id": 1,
        "data": {"item_id": "a", "title": "Oxford shoe"},
        "meta": {"item_id": "a"},
        "annotations": [annotation(11, "Shoes", "2025-01-01T10:00:00Z")],
    }
    fake.tasks = [good]
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.create_all()
    client = cast(LabelStudioClient, fake)
    assert sync_project(client, store, 1, TAX).recorded == 1

    # Someone edits the task in Label Studio: its item id is no longer one we can read, and its
    # title carries personal data. A second task with a good annotation must still be recorded.
    fake.tasks = [
        {
            **good,
            "data": {"item_id": "a b\n", "title": "call jane.doe@corp.com"},
            "meta": ["not", "a", "map"],
        },
        {
            "id": 2,
            "data": {"item_id": "b"},
            "meta": {"item_id": "b"},
            "annotations": [annotation(12, "Hats", "2025-01-01T10:00:00Z"), {"id": 13, "result": "junk"}],
        },
    ]
    with caplog.at_level(logging.WARNING, logger="labeling.sync"):
        report = sync_project(client, store, 1, TAX)
    assert (report.recorded, report.deleted, report.skipped_malformed) == (1, 0, 2)
    assert [r.action for r in store.history(11)] == ["created"]  # not taken for deleted
    assert [r.label for r in store.history(12)] == ["Hats"]
    assert "malformed task (id 1)" in caplog.text
    assert "jane.doe" not in caplog.text
    assert "corp.com" not in caplog.text


class ShiftedPages(FakeLabelStudio):
    """Label Studio reading pages while a task leaves the annotated set in front of the scan: the task
    after it slides onto the page already read, so one scan never sees it."""

    def __init__(self, missed: int) -> None:
        super().__init__()
        self.missed = missed

    def iter_tasks(
        self, project_id: int, *, annotated_only: bool = False, page_size: int = 100
    ) -> Iterator[dict[str, Any]]:
        for task in super().iter_tasks(project_id, annotated_only=annotated_only, page_size=page_size):
            if task["id"] != self.missed:
                yield task


def test_an_annotation_a_scan_missed_is_not_taken_for_deleted(tmp_path: Path) -> None:
    fake = ShiftedPages(missed=-1)
    fake.tasks = [
        {
            "id": i,
            "data": {"item_id": f"i{i}"},
            "meta": {"item_id": f"i{i}"},
            "annotations": [annotation(i * 10, "Shoes", "2025-01-01T10:00:00Z")],
        }
        for i in (1, 2, 3)
    ]
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.create_all()
    client = cast(LabelStudioClient, fake)
    assert sync_project(client, store, 1, TAX).recorded == 3

    fake.missed = 2  # the next scan does not see task 2, whose annotation Label Studio still holds
    report = sync_project(client, store, 1, TAX)
    assert (report.deleted, report.unseen_but_present) == (0, 1)
    assert [r.action for r in store.history(20)] == ["created"]
    assert store.current_labels(project_id=1)["i2"].label == "Shoes"

    fake.tasks[2]["annotations"] = []  # really deleted in Label Studio: recorded
    report = sync_project(client, store, 1, TAX)
    assert (report.deleted, report.unseen_but_present) == (1, 1)
    assert [r.action for r in store.history(30)] == ["created", "deleted"]


def needs_senior_task(annotated_by: dict[str, int]) -> dict[str, Any]:
    """Task 1 (item "a"), escalated as high-stakes, with annotation 11 ("Shoes") by `annotated_by`."""
    return {
        "id": 1,
        "data": {"item_id": "a"},
        "meta": {"item_id": "a", "needs_senior": True},
        "annotations": [annotation(11, "Shoes", "2025-01-01T10:00:00Z", **annotated_by)],
    }


def test_an_annotation_a_junior_edited_is_a_proposal_even_when_a_senior_created_it(tmp_path: Path) -> None:
    # Both webhooks were missed: the sync sees the annotation for the first time, already edited.
    fake = FakeLabelStudio()
    fake.tasks = [needs_senior_task({"completed_by": 5, "updated_by": 2})]
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.create_all()
    sync_project(cast(LabelStudioClient, fake), store, 1, TAX, is_senior=lambda user: user == 5)
    (row,) = store.history(11)
    assert (row.action, row.label, row.reviewer_id) == ("proposed", None, 2)


def test_a_needs_senior_annotation_waits_for_a_readable_user_directory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeLabelStudio()
    fake.tasks = [
        needs_senior_task({"completed_by": 5, "updated_by": 5}),
        {"id": 2, "data": {"item_id": "b"}, "annotations": [annotation(12, "Hats", "2025-01-01T10:00:00Z")]},
    ]
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.create_all()
    down = [True]

    def is_senior(user: int | None) -> bool:
        if down[0]:
            raise ReviewerDirectoryUnavailable(user or 0, 0)
        return user == 5

    client = cast(LabelStudioClient, fake)
    with caplog.at_level(logging.WARNING, logger="labeling.sync"):
        report = sync_project(client, store, 1, TAX, is_senior=is_senior)
    assert (report.recorded, report.deferred) == (1, 1)  # the other task does not wait
    assert "1 annotation(s) on needs-senior tasks left for the next sync" in caplog.text
    assert list(store.current_labels(project_id=1)) == ["b"]
    down[0] = False
    report = sync_project(client, store, 1, TAX, is_senior=is_senior)
    assert (report.recorded, report.deferred) == (1, 0)
    (row,) = store.history(11)
    assert (row.action, row.label, row.reviewer_id) == ("created", "Shoes", 5)


def test_periodic_sync_runs_until_stopped_and_says_when_a_sync_still_runs() -> None:
    runs: list[int] = []
    inside, release = threading.Event(), threading.Event()

    def job() -> None:
        runs.append(1)
        if len(runs) == 3:  # the third sync hangs (a Label Studio call past its timeout)
            inside.set()
            release.wait(30)

    periodic = PeriodicSync(job, interval_s=0.01)
    periodic.start()
    try:
        assert inside.wait(10), "the job did not run three times"
        assert periodic.stop(timeout=0.1) is False
    finally:
        release.set()
    assert periodic.stop(timeout=10) is True
    assert len(runs) == 3  # nothing after the stop
