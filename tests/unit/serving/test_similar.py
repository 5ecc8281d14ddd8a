from __future__ import annotations

from pathlib import Path

from labeling.push import Escalation
from learner.data import Product
from serving.retrain.labels import add_seed_labels
from serving.similar import SimilarLabelled
from serving.store import Store


def _esc(item_id: str, title: str, action: str = "push") -> Escalation:
    return Escalation(
        item_id=item_id,
        title=title,
        predicted_label="Home > Pans",
        confidence=0.4,
        priority=0.5,
        model_version="v1",
        action=action,
    )


def test_similar_labelled_items_follow_new_labels_and_never_name_the_item_itself(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'hitl.db'}")
    store.create_all()
    similar = SimilarLabelled(store, k=2)
    (alone,) = similar.fill([_esc("x", "Steel frying pan 28 cm")])
    assert alone.similar == []  # nothing labelled yet

    add_seed_labels(
        store,
        [
            Product(id="pan-24", title="Steel frying pan 24 cm", category=["Home", "Pans"]),
            Product(id="x", title="Steel frying pan 28 cm", category=["Home", "Pans"]),
            Product(id="tea", title="Green tea 100 bags", category=["Food", "Tea"]),
        ],
        level=2,
    )
    pushed, closed = similar.fill([_esc("x", "Steel frying pan 28 cm"), _esc("y", "t", action="close")])
    assert pushed.similar[0] == ("Steel frying pan 24 cm", "Home > Pans")
    assert all(title != "Steel frying pan 28 cm" for title, _ in pushed.similar)  # not itself
    assert closed.similar == []
    store.close()
