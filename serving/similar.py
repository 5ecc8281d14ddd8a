"""The labelled items most like an escalated one, shown on its task ("Similar items people labelled").

The labelled items are the ones the next retrain learns from (`serving.retrain.labels.collect_labels`:
seed labels and the current human corrections); the index (`learner.neighbours.TextNeighbours`) is
refitted only when that set changed (a new correction or seed label), so a quiet queue costs nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from labeling.push import Escalation
from learner.data import TEXT_SEPARATOR, Product, item_text
from learner.neighbours import TextNeighbours
from serving.retrain.labels import LabeledText, collect_labels, correction_watermark, seed_count
from serving.store import Store

logger = logging.getLogger(__name__)


class SimilarLabelled:
    def __init__(self, store: Store, k: int = 3) -> None:
        self.store = store
        self.k = k
        self._lock = threading.Lock()
        self._key: tuple[int, int] | None = None
        self._labelled: list[LabeledText] = []
        self._index: TextNeighbours | None = None

    def _current(self) -> tuple[list[LabeledText], TextNeighbours]:
        with self._lock:
            key = (correction_watermark(self.store), seed_count(self.store))
            if self._index is None or key != self._key:
                self._labelled = collect_labels(self.store).labels
                self._index = TextNeighbours([r.text for r in self._labelled])
                self._key = key
            return self._labelled, self._index

    def fill(self, escalations: Sequence[Escalation]) -> list[Escalation]:
        """`escalations` with `similar` set on each one to push (closes need none); the item itself is
        never its own neighbour."""
        pushes = [e for e in escalations if e.action == "push"]
        if not pushes:
            return list(escalations)
        labelled, index = self._current()
        texts = [
            item_text(Product(id=e.item_id, title=e.title, description=e.description, brand=e.brand or None))
            for e in pushes
        ]
        neighbours, _ = index.nearest(texts, self.k + 1)
        filled = iter(
            esc.model_copy(
                update={
                    "similar": [
                        (labelled[i].text.split(TEXT_SEPARATOR)[0], labelled[i].label)
                        for i in row
                        if i >= 0 and labelled[i].item_id != esc.item_id
                    ][: self.k]
                }
            )
            for esc, row in zip(pushes, neighbours, strict=True)
        )
        return [next(filled) if e.action == "push" else e for e in escalations]
