"""The simulated merchandiser (`labeling.demo`) against a hand-written Label Studio queue."""

from __future__ import annotations

from typing import Any

import pytest

from labeling.config import SUGGESTION_NAME, Taxonomy, label_from_result, suggestions_data
from labeling.demo import SimulatedMerchandiser
from labeling.exceptions import LabelingError, LabelStudioApiError

TAXONOMY = Taxonomy.from_paths(
    ["Home > Cookware", "Home > Decor", "Sports > Running", "Sports > Cycling", "Toys > Games"]
)


class FakeQueue:
    """Serves its tasks in list order, each until it has an annotation; `vanish` deletes a task between
    `next_task` and the annotation, as a promotion's auto-resolve does."""

    def __init__(self, tasks: list[dict[str, Any]], *, vanish: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.tasks = {t["id"]: t for t in tasks}
        self.annotations: list[tuple[int, list[dict[str, Any]], bool]] = []
        self.vanish = set(vanish)
        self.refuse_with: LabelStudioApiError | None = None

    def next_task(self, project_id: int) -> dict[str, Any] | None:
        done = {task_id for task_id, _, _ in self.annotations}
        return next((t for t in self.tasks.values() if t["id"] not in done), None)

    def get_task(self, task_id: int) -> dict[str, Any]:
        if task_id not in self.tasks:
            raise LabelStudioApiError(f"get task {task_id}", 404, "Not found")
        return self.tasks[task_id]

    def create_annotation(
        self, task_id: int, result: Any, *, lead_time: float | None = None, was_cancelled: bool = False
    ) -> dict[str, Any]:
        if task_id in self.vanish:
            del self.tasks[task_id]
            self.vanish.discard(task_id)
            raise LabelStudioApiError(f"annotate task {task_id}", 500, "FOREIGN KEY constraint failed")
        if self.refuse_with is not None:
            raise self.refuse_with
        self.annotations.append((task_id, list(result), was_cancelled))
        return {"id": len(self.annotations)}


def task(task_id: int, item_id: str, suggested: list[str], version: str = "v3") -> dict[str, Any]:
    return {
        "id": task_id,
        "data": {
            "item_id": item_id,
            "reason": "random audit",
            "suggestions": suggestions_data([(s, 0.3) for s in suggested]),
        },
        "predictions": [
            {"model_version": version, "result": TAXONOMY.result_for(suggested[0], suggested=True)}
        ],
    }


def test_it_takes_the_first_correct_suggestion_else_the_category_in_the_taxonomy() -> None:
    queue = FakeQueue(
        [
            task(1, "a", ["Home > Decor", "Home > Cookware", "Sports > Running"]),
            task(2, "b", ["Home > Decor", "Home > Cookware", "Sports > Running"]),
        ]
    )
    truth = {"a": "Home > Cookware", "b": "Toys > Games"}
    merchandiser = SimulatedMerchandiser(queue, 7, TAXONOMY, truth)

    first = merchandiser.review_next()
    second = merchandiser.review_next()

    assert merchandiser.review_next() is None, "the queue is empty"
    assert first is not None
    assert second is not None
    assert (first.item_id, first.label, first.one_click, first.correct) == (
        "a",
        "Home > Cookware",
        True,
        True,
    )
    assert (first.model_version, first.pre_selected) == ("v3", "Home > Decor")
    assert (second.label, second.one_click, second.correct) == ("Toys > Games", False, True)
    (_, click, _), (_, picked, _) = queue.annotations
    assert click[0]["from_name"] == SUGGESTION_NAME, "a one-click choice among the suggestions"
    assert picked[0]["from_name"] != SUGGESTION_NAME, "a pick in the whole taxonomy"
    assert [label_from_result(r) for _, r, _ in queue.annotations] == ["Home > Cookware", "Toys > Games"]


def test_noise_makes_that_share_of_labels_wrong_by_clicking_another_suggestion() -> None:
    n, noise = 2000, 0.3
    suggested = ["Home > Decor", "Home > Cookware", "Sports > Running"]
    queue = FakeQueue([task(i, f"item-{i}", suggested) for i in range(n)])
    truth = {f"item-{i}": "Home > Cookware" for i in range(n)}
    merchandiser = SimulatedMerchandiser(queue, 7, TAXONOMY, truth, noise=noise, seed=3)

    reviews = [merchandiser.review_next() for _ in range(n)]

    wrong = [r for r in reviews if r is not None and not r.correct]
    # Binomial(2000, 0.3): sd 0.0102; 4 sd = 0.041.
    assert abs(len(wrong) / n - noise) < 0.041
    assert {r.label for r in wrong} == {"Home > Decor", "Sports > Running"}, "a plausible slip"
    assert all(r.one_click for r in wrong)


def test_an_item_without_known_truth_is_skipped_not_labelled() -> None:
    queue = FakeQueue([task(1, "unknown", ["Home > Decor"])])

    review = SimulatedMerchandiser(queue, 7, TAXONOMY, {}).review_next()

    assert review is not None
    assert review.skipped
    assert not review.gone
    assert queue.annotations == [(1, [], True)], "Label Studio's Skip: a cancelled annotation"


def test_a_skipped_task_served_again_means_the_queue_is_done_for_this_reviewer() -> None:
    class RequeueForMe(FakeQueue):  # the project's skip_queue: skipped tasks come back last
        def next_task(self, project_id: int) -> dict[str, Any] | None:
            done = {task_id for task_id, _, cancelled in self.annotations if not cancelled}
            return next((t for t in self.tasks.values() if t["id"] not in done), None)

    queue = RequeueForMe([task(1, "unknown", ["Home > Decor"])])
    merchandiser = SimulatedMerchandiser(queue, 7, TAXONOMY, {})
    first = merchandiser.review_next()
    assert first is not None
    assert first.skipped
    assert merchandiser.review_next() is None
    assert len(queue.annotations) == 1, "skipped once, not again and again"


def test_a_task_that_vanished_while_open_is_reported_gone_and_the_queue_moves_on() -> None:
    queue = FakeQueue([task(1, "a", ["Home > Decor"]), task(2, "b", ["Home > Decor"])], vanish={1})
    merchandiser = SimulatedMerchandiser(queue, 7, TAXONOMY, {"a": "Home > Decor", "b": "Home > Decor"})

    gone = merchandiser.review_next()
    after = merchandiser.review_next()

    assert gone is not None
    assert gone.gone
    assert gone.label is None
    assert after is not None
    assert (after.item_id, after.label) == ("b", "Home > Decor")


def test_any_other_refusal_is_raised() -> None:
    queue = FakeQueue([task(1, "a", ["Home > Decor"])])
    queue.refuse_with = LabelStudioApiError("annotate task 1", 400, "bad result")

    with pytest.raises(LabelStudioApiError, match="HTTP 400"):
        SimulatedMerchandiser(queue, 7, TAXONOMY, {"a": "Home > Decor"}).review_next()


@pytest.mark.parametrize("noise", [-0.1, 1.5])
def test_noise_outside_0_1_is_refused_with_the_value(noise: float) -> None:
    with pytest.raises(LabelingError, match=str(noise)):
        SimulatedMerchandiser(FakeQueue([]), 7, TAXONOMY, {}, noise=noise)
