"""Reconciliation: Label Studio sends each webhook once, so pull annotations and fill what was missed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from pydantic import ValidationError

from labeling.client import LabelStudioClient
from labeling.config import Taxonomy
from labeling.exceptions import LabelingError, ReviewerDirectoryUnavailable
from labeling.webhooks import (
    AnnotationPayload,
    CorrectionEvent,
    DeletionEvent,
    TaskPayload,
    correction_from,
    utc,
)
from learner.pii import describe_error

logger = logging.getLogger(__name__)


class CorrectionSink(Protocol):
    """Where corrections go (serving's store implements it)."""

    def record_correction(self, event: CorrectionEvent) -> bool:
        """Store one annotation state; False when that exact state was already stored."""
        ...

    def record_deletion(self, event: DeletionEvent) -> int:
        """Record deletions; returns how many were new."""
        ...

    def annotation_versions(self, project_id: int) -> dict[int, datetime]:
        """Live (not deleted) annotation id -> latest stored `updated_at` (UTC)."""
        ...


@dataclass
class SyncReport:
    annotations_seen: int = 0
    recorded: int = 0
    deleted: int = 0
    rejected: int = 0
    skipped_malformed: int = 0
    unseen_but_present: int = 0  # missed by this scan, still in Label Studio: not deleted
    deferred: int = 0  # on a needs-senior task while Label Studio's users cannot be read: next sync


def _with_prediction(task: dict[str, Any]) -> dict[str, Any]:
    # Fall back on the task's first prediction when the annotation does not carry one.
    meta = dict(task.get("meta") or {})
    predictions = task.get("predictions") or []
    if predictions and isinstance(predictions[0], dict):
        first = predictions[0]
        meta.setdefault("model_version", first.get("model_version"))
    return meta


def _annotation_ids(raws: Any) -> set[int]:
    """Ids of the annotations in `raws` that have one (what Label Studio still holds, readable or not)."""
    return {
        raw["id"]
        for raw in raws
        if isinstance(raw, dict) and isinstance(raw.get("id"), int) and not isinstance(raw.get("id"), bool)
    }


def _id_of(task: Any) -> str:
    value = task.get("id") if isinstance(task, dict) else None
    return str(value) if isinstance(value, int) else "unreadable"


def sync_project(
    client: LabelStudioClient,
    sink: CorrectionSink,
    project_id: int,
    taxonomy: Taxonomy,
    *,
    progress: Callable[[int], None] | None = None,
    is_senior: Callable[[int | None], bool] | None = None,
) -> SyncReport:
    """Record every annotation state the store lacks, and deletions of annotations gone from Label Studio
    (with the same reviewer tiers as the webhooks: `is_senior`). A state whose reviewer tier cannot be
    told now is left for the next sync (`SyncReport.deferred`), never stored as a guess."""
    report = SyncReport()
    known = {aid: utc(ts) for aid, ts in sink.annotation_versions(project_id).items()}
    present: set[int] = set()
    for task in client.iter_tasks(project_id, annotated_only=True):
        raws = task.get("annotations") or []
        try:
            task_model = TaskPayload(
                id=task.get("id"), data=task.get("data") or {}, meta=_with_prediction(task)
            )
        except (ValueError, TypeError):  # pydantic's ValidationError is a ValueError
            # A task edited in Label Studio into something we cannot read: its annotations are skipped,
            # not taken for deleted (that would drop labels we hold), and its text stays out of the log.
            report.skipped_malformed += len(raws)
            present.update(_annotation_ids(raws))
            logger.warning(
                "sync: skipped %d annotation(s) of a malformed task (id %s)", len(raws), _id_of(task)
            )
            continue
        for raw in raws:
            try:
                annotation = AnnotationPayload.model_validate(
                    {"task": task_model.id, "project": project_id, **raw}
                )
            except ValidationError:
                report.skipped_malformed += 1
                present.update(_annotation_ids([raw]))
                logger.warning("sync: skipped a malformed annotation in task %d", task_model.id)
                continue
            report.annotations_seen += 1
            present.add(annotation.id)
            previous = known.get(annotation.id)
            if previous is not None and previous == utc(annotation.updated_at):
                continue
            try:
                event = correction_from(
                    annotation,
                    task_model,
                    taxonomy,
                    updated=previous is not None,
                    source="sync",
                    project_id=project_id,
                    is_senior=is_senior,
                )
            except ReviewerDirectoryUnavailable:
                report.deferred += 1
                continue
            if sink.record_correction(event):
                report.recorded += 1
                report.rejected += event.action == "rejected"
            if progress is not None:
                progress(report.annotations_seen)
    # Not seen in this scan is not yet deleted: the task list is read page by page, and a task that
    # leaves the annotated set in front of the scan (a reviewer deletes an annotation, a task is
    # closed) shifts the rest back by one, so one task goes unseen. A deletion is recorded only once
    # Label Studio answers 404 for the annotation itself; a recorded deletion outranks the label.
    unseen = sorted(set(known) - present)
    gone = tuple(a for a in unseen if not client.annotation_exists(a))
    report.unseen_but_present = len(unseen) - len(gone)
    if gone:
        report.deleted = sink.record_deletion(DeletionEvent(gone, project_id, "sync"))
    if report.deferred:
        logger.warning(
            "sync: %d annotation(s) on needs-senior tasks left for the next sync: Label Studio's users "
            "cannot be read",
            report.deferred,
        )
    return report


class PeriodicSync:
    """Runs `job` every `interval_s` s in a daemon thread until `stop()`; errors are logged, not raised."""

    def __init__(self, job: Callable[[], object], interval_s: float) -> None:
        self._job = job
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="labelstudio-sync", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._job()
            except LabelingError as exc:
                logger.warning("periodic Label Studio sync failed: %s", describe_error(exc))
            except Exception as exc:  # keep the loop alive; the next run retries
                # No traceback: its messages can quote item text or URLs. The masked error names the cause.
                logger.error("periodic Label Studio sync crashed: %s", describe_error(exc))

    def stop(self, timeout: float = 5.0) -> bool:
        """Ask the thread to stop and wait up to `timeout` s; False if a sync is still running then."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("periodic Label Studio sync: still running %.0f s after stop", timeout)
            return False
        return True
