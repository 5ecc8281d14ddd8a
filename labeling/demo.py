"""A simulated merchandiser: works through a project in Label Studio's own queue order, through its API.

It does what a person clicking **Label All Tasks** does: asks Label Studio for the next task (so the
project's sampling decides the order, audits first), reads the task as shown, and submits an
annotation. Its answers come from a ground-truth map (the demo catalog's categories); it takes the first
correct one-click suggestion when there is one, else picks the category in the whole taxonomy. With
`noise` it is wrong on purpose: it clicks another suggestion (a plausible slip), or a random category
when the task offers no other suggestion.

Tasks whose item has no known truth are skipped (Label Studio's "Skip": a cancelled annotation, which
is recorded but is not a label), so the queue moves on instead of serving the same task again.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from labeling.config import Taxonomy, label_from_result
from labeling.exceptions import LabelingError, LabelStudioApiError


class MerchandiserClient(Protocol):
    """The part of `labeling.client.LabelStudioClient` a simulated merchandiser uses."""

    def next_task(self, project_id: int) -> dict[str, Any] | None: ...

    def get_task(self, task_id: int) -> dict[str, Any]: ...

    def create_annotation(
        self,
        task_id: int,
        result: Any,
        *,
        lead_time: float | None = None,
        was_cancelled: bool = False,
    ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Review:
    """One task the simulated merchandiser worked on."""

    task_id: int
    item_id: str
    label: str | None  # what it submitted; None = skipped (no known truth) or gone
    truth: str | None
    one_click: bool  # the label was one of the task's suggestions
    model_version: str | None  # of the task's pre-annotation
    pre_selected: str | None  # the model's guess the task came with
    reason: str
    gone: bool = False  # the task left the queue while being read (auto-resolved by a promotion)

    @property
    def correct(self) -> bool:
        return self.label is not None and self.label == self.truth

    @property
    def skipped(self) -> bool:
        return self.label is None


def _suggested(data: Mapping[str, Any]) -> list[str]:
    raw = data.get("suggestions")
    if not isinstance(raw, list):
        return []
    return [str(s["value"]) for s in raw if isinstance(s, dict) and s.get("value")]


def _prediction(task: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(model_version, pre-selected label) of the task's newest prediction, if any."""
    predictions = task.get("predictions")
    if not isinstance(predictions, list) or not predictions:
        return None, None
    newest = predictions[-1] if isinstance(predictions[-1], dict) else {}
    result = newest.get("result")
    label = label_from_result(result) if isinstance(result, list) else None
    version = newest.get("model_version")
    return (str(version) if version else None), label


class SimulatedMerchandiser:
    def __init__(
        self,
        client: MerchandiserClient,
        project_id: int,
        taxonomy: Taxonomy,
        truth: Mapping[str, str],
        *,
        noise: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= noise <= 1.0:
            raise LabelingError(f"noise must be a probability in [0, 1], got {noise}")
        if len(taxonomy) < 2 and noise > 0:
            raise LabelingError(f"a wrong label needs >= 2 categories; the taxonomy has {len(taxonomy)}")
        self.client = client
        self.project_id = project_id
        self.taxonomy = taxonomy
        self.truth = truth
        self.noise = noise
        self._rng = random.Random(seed)
        # Skipped tasks come back to the reviewer who skipped them once the rest of the queue is done
        # (`labeling.client.QUEUE_SETTINGS`): served one again, this reviewer's queue is done.
        self._skipped: set[int] = set()

    def _answer(self, truth: str, suggested: list[str]) -> str:
        if self._rng.random() >= self.noise:
            return truth
        wrong = [s for s in suggested if s != truth and s in self.taxonomy]
        if not wrong:
            wrong = [label for label in self.taxonomy.labels if label != truth]
        return self._rng.choice(wrong)

    def review_next(self) -> Review | None:
        """Annotate the task Label Studio serves next; None when its queue is empty for this user."""
        started = time.monotonic()
        task = self.client.next_task(self.project_id)
        if task is None:
            return None
        task_id = int(task["id"])
        if task_id in self._skipped:
            return None
        data: Mapping[str, Any] = task["data"] if isinstance(task.get("data"), dict) else {}
        item_id = str(data.get("item_id", ""))
        suggested = _suggested(data)
        version, pre_selected = _prediction(task)
        truth = self.truth.get(item_id)
        seen = Review(
            task_id=task_id,
            item_id=item_id,
            label=None,
            truth=truth,
            one_click=False,
            model_version=version,
            pre_selected=pre_selected,
            reason=str(data.get("reason", "")),
        )
        if truth is None or truth not in self.taxonomy:
            self._skipped.add(task_id)
            return seen if self._submit(task_id, [], cancelled=True) else replace(seen, gone=True)
        label = self._answer(truth, suggested)
        one_click = label in suggested
        result = self.taxonomy.result_for(label, suggested=one_click)
        if not self._submit(task_id, result, lead_time=round(time.monotonic() - started, 3)):
            return replace(seen, gone=True)
        return replace(seen, label=label, one_click=one_click)

    def _submit(
        self,
        task_id: int,
        result: list[dict[str, Any]],
        *,
        lead_time: float | None = None,
        cancelled: bool = False,
    ) -> bool:
        """Annotate; False when the task was deleted meanwhile (a promotion auto-resolved its item, as a
        person in the UI would see it vanish). Label Studio answers that with a 404, or on SQLite with
        a 500 "FOREIGN KEY constraint failed"; any other refusal is raised."""
        try:
            self.client.create_annotation(task_id, result, lead_time=lead_time, was_cancelled=cancelled)
        except LabelStudioApiError:
            try:
                self.client.get_task(task_id)
            except LabelStudioApiError as gone:
                if gone.status == 404:
                    return False
            raise
        return True
