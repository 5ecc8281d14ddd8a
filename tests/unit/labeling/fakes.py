"""Tiny hand-written fakes of the Label Studio client (no mocks)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from labeling.client import LiveTask, unreviewed_tasks
from labeling.exceptions import LabelStudioApiError


class FakeLabelStudio:
    def __init__(self) -> None:
        self.imports: list[list[dict[str, Any]]] = []
        self.tasks: list[dict[str, Any]] = []
        self._next_id = 100

    def import_tasks(self, project_id: int, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
        batch = [dict(t) for t in tasks]
        self.imports.append(batch)
        ids = list(range(self._next_id, self._next_id + len(batch)))
        self._next_id += len(batch)
        for task_id, task in zip(ids, batch, strict=True):
            self.tasks.append({"id": task_id, **task, "annotations": []})
        return ids

    def iter_tasks(
        self, project_id: int, *, annotated_only: bool = False, page_size: int = 100
    ) -> Iterator[dict[str, Any]]:
        for task in self.tasks:
            if task["annotations"] or not annotated_only:
                yield task

    def _task(self, task_id: int) -> dict[str, Any]:
        for task in self.tasks:
            if task["id"] == task_id:
                return task
        raise LabelStudioApiError(f"read task {task_id}", 404, "Not found.")

    def create_prediction(self, task_id: int, prediction: Mapping[str, Any]) -> int:
        self._task(task_id)["predictions"].append(dict(prediction))
        self._next_id += 1
        return self._next_id

    def get_task(self, task_id: int) -> dict[str, Any]:
        return self._task(task_id)

    def update_task(self, task_id: int, *, data: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        task = self._task(task_id)
        task["data"], task["meta"] = dict(data), dict(meta)

    def tasks_of_items(self, project_id: int, item_ids: Sequence[str]) -> dict[str, int]:
        return unreviewed_tasks(self.live_tasks_of_items(project_id, item_ids))

    def task_ids_of_items(self, project_id: int, item_ids: Sequence[str]) -> dict[str, list[int]]:
        return {
            item: [t.id for t in tasks]
            for item, tasks in self.live_tasks_of_items(project_id, item_ids).items()
        }

    def live_tasks_of_items(self, project_id: int, item_ids: Sequence[str]) -> dict[str, list[LiveTask]]:
        found: dict[str, list[LiveTask]] = {}
        for task in self.tasks:
            item = (task.get("data") or {}).get("item_id")
            if isinstance(item, str) and item in item_ids:
                found.setdefault(item, []).append(LiveTask.of(task))
        return found

    def annotation_exists(self, annotation_id: int) -> bool:
        return any(a.get("id") == annotation_id for t in self.tasks for a in t.get("annotations") or [])

    def delete_task(self, task_id: int) -> bool:
        before = len(self.tasks)
        self.tasks = [t for t in self.tasks if t["id"] != task_id]
        return len(self.tasks) < before
